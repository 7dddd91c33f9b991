"""Config loading and validation: YAML in, a typed :class:`~sidemesh.datapath.model.SidecarConfig`
out (or every error, with its path), plugin discovery, and the snapshot a config compiles to."""
