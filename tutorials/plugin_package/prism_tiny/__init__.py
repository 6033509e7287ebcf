"""prism-tiny: an example of a third party's prism plugins."""
