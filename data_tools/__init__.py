"""Raw data -> prism cache: synthetic phantoms (and, later, BraTS/NIfTI reading and preprocessing)."""
