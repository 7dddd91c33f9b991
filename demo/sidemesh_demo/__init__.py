"""sidemesh-demo: ``sidemesh demo``, the whole mesh on one machine, built on nothing of
sidemesh but its command line, its HTTP APIs, its public names and its test kit."""
