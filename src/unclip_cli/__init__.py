"""unclip: DALL-E 2 style text-to-image, variations and edits (unCLIP) on your own machine."""

__version__ = "0.1.0"
