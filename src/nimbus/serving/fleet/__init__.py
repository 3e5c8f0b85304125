"""The deployment fleet: supervisor, replica processes, rollout, shared sockets."""
