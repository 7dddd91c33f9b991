"""Operator and developer tools on top of everything else: the CLI, ``explain``, the plugin
scaffold, the reference generators and the compiled build."""
