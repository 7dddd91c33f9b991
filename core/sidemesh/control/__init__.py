"""The sidemesh control plane: config store, distribution API and certificate authority."""

__all__: list[str] = []
