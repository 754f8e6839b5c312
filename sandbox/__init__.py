"""The embedded sandbox: a Kubernetes API emulator, sandbox kubelets and scheduler, node sysroots."""
