"""prism's built-in plugins, registered through the ``prism`` entry-point group like any third party's."""
