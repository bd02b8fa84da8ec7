"""What a stage's network means to the sampler: one small frozen record per stage, no torch.

Stored in our checkpoints' metadata beside the architecture config (key "diffusion"), derived
once from the scheduler config for diffusers-layout models (`weights/folder.py`). Sampling,
training and the parity tests read it; nothing guesses it from channel counts.
"""

from dataclasses import asdict, dataclass, fields

SCHEDULES = ("cosine",)  # Improved DDPM's "squaredcos_cap_v2"
PREDICTIONS = ("epsilon", "v", "sample")  # what the network outputs: noise, v (Salimans & Ho 2022) or x0
VARIANCES = ("fixed_small", "learned_range")  # posterior variance, or Improved DDPM's learned interpolation


@dataclass(frozen=True)
class DiffusionSpec:
    schedule: str = "cosine"
    num_timesteps: int = 1000
    prediction: str = "epsilon"
    variance: str = "fixed_small"
    clamp: float | None = 1.0  # x0 is clamped to [-clamp, clamp]; None: never
    # Output channels classifier-free guidance mixes (the prediction); the rest (learned variance) come
    # from the conditional half, as Karlo does. None: all of them.
    guided_channels: int | None = None

    def __post_init__(self):
        for name, value, allowed in (("schedule", self.schedule, SCHEDULES), ("prediction", self.prediction, PREDICTIONS),
                                     ("variance", self.variance, VARIANCES)):
            if value not in allowed:
                raise ValueError(f"diffusion {name} = {value!r} is not supported (one of: {', '.join(allowed)})")
        if not isinstance(self.num_timesteps, int) or self.num_timesteps < 2:
            raise ValueError(f"diffusion num_timesteps must be an integer >= 2, got {self.num_timesteps!r}")
        if self.clamp is not None and not self.clamp > 0:
            raise ValueError(f"diffusion clamp must be positive or null, got {self.clamp!r}")
        if self.variance == "learned_range" and not self.guided_channels:
            raise ValueError("a learned_range variance needs guided_channels (how many output channels are the prediction)")

    @property
    def learned_variance(self) -> bool:
        return self.variance == "learned_range"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "DiffusionSpec":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown diffusion fields {sorted(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**data)
