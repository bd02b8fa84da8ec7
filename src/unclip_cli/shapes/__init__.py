"""The procedural shapes world (world.py), its pixel judge (judge.py) and `unclip eval` over it (evaluate.py)."""
