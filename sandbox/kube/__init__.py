"""The real Kubernetes tier of the test bed: the pinned release built by build.sh, run on loopback by cluster.py."""
