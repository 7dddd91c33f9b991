"""The plugin contract: the policy base class, its context, the lifecycle hooks, and the
helpers plugins share (durations, SPIFFE IDs). Imports only the data path below it."""
