"""`unclip train`: one loop for every stage (loop.py), what each stage trains (tasks.py), and its data (data.py)."""
