"""Reading prism's HDF5 cache and sampling training patches from it."""
