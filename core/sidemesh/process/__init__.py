"""The sidecar process: file and control-plane modes, the admin API, signals and drain."""
