"""The networks and their frozen configs: CLIP (the one module importing open_clip), prior, UNet, text_proj. Import nothing else from unclip_cli."""
