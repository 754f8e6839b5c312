"""A focused Kubernetes API emulator served over real HTTP (see README, "The embedded sandbox")."""
