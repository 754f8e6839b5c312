"""The two backends of the cluster-side integration tests: our API emulator and the real control plane.

The real one (sandbox/kube/cluster.py, the pinned release) starts once per test session (per xdist worker) and is
reset to its baseline after each test by deleting, in etcd, every key the test added. It runs without kube-scheduler,
without the node lifecycle and ttl controllers and without the TaintNodesByCondition admission plugin (whose not-ready taint
only that controller removes): the emulator has none of them, so tests bind their pods themselves and create
Node objects no kubelet keeps alive (the real scheduler and the node lifecycle controller are proven by the
end-to-end tests, test_real_*.py).
"""

import os
import time

from sandbox.kube import cluster as kube_cluster
from sandbox.kube import etcdkeys

BACKENDS = ("emulator", "real")
# The emulators of the `kubeapi` fixture append every request to this file when it is set (sandbox/kubeapi/requestlog.py).
REQUEST_LOG_VARIABLE = "KATALYST_KUBEAPI_REQUEST_LOG"
REAL_WITHOUT = ("kube-scheduler",)
# Node controllers the emulator has no counterpart of: the node lifecycle controller taints and marks Nodes that no
# kubelet keeps alive, the ttl controller annotates every Node (node.alpha.kubernetes.io/ttl), which shows up in
# watches, conflicts and exact comparisons.
REAL_DISABLED_CONTROLLERS = ("node-lifecycle-controller", "ttl-controller")
# It taints every new Node `node.kubernetes.io/not-ready:NoSchedule`, which only the node lifecycle controller removes.
REAL_DISABLED_ADMISSION_PLUGINS = ("TaintNodesByCondition",)


def real_build_missing():
    """Why the real backend cannot run here, or None."""
    binary = os.path.join(kube_cluster.default_bin_dir(), "kube")
    if not os.access(binary, os.X_OK):
        return "the pinned Kubernetes release is not built (%s is missing): run `make kube-build`" % binary
    return None


class RealControlPlane:
    """A control plane shared by the tests of one session; `reset()` brings it back to how it was after `start()`."""

    backend = "real"

    def __init__(self, state):
        self.cluster = kube_cluster.Cluster(str(state), without=REAL_WITHOUT, disabled_controllers=REAL_DISABLED_CONTROLLERS,
                                            disabled_admission_plugins=REAL_DISABLED_ADMISSION_PLUGINS,
                                            progress=kube_cluster.Progress(quiet=True))
        self.kubeconfig = self.cluster.kubeconfig
        self.url = self.etcd_url = None
        self.baseline = frozenset()

    def start(self, timeout=600.0):
        self.cluster.up(timeout=timeout)
        self.url = "https://127.0.0.1:%d" % self.cluster.ports["apiserver"]
        self.etcd_url = "http://127.0.0.1:%d" % self.cluster.ports["etcd_client"]
        self._wait_bootstrapped(timeout)
        self.baseline = frozenset(etcdkeys.list_keys(self.etcd_url))
        return self

    def stop(self):
        self.cluster.down()

    def _client(self):
        import kubernetes  # pylint: disable=import-outside-toplevel
        return kubernetes.config.new_client_from_config(config_file=self.kubeconfig)

    def _wait_bootstrapped(self, timeout):
        """What the controller-manager adds to a new cluster (each namespace's default ServiceAccount and root CA
        ConfigMap) is part of the baseline, so a reset never deletes it and a test never waits for it."""
        import kubernetes  # pylint: disable=import-outside-toplevel
        with self._client() as api:
            core = kubernetes.client.CoreV1Api(api)
            namespaces = ("default", "kube-system", "kube-public", "kube-node-lease")

            def bootstrapped():
                try:
                    for namespace in namespaces:
                        core.read_namespaced_service_account("default", namespace)
                        core.read_namespaced_config_map("kube-root-ca.crt", namespace)
                except kubernetes.client.exceptions.ApiException:
                    return False
                return True
            _wait(bootstrapped, timeout, "the controller-manager to bootstrap the namespaces")

    def reset(self, timeout=120.0):
        """Delete every key added since the baseline; wait until the apiserver no longer serves what was deleted."""
        added = etcdkeys.list_keys(self.etcd_url) - self.baseline
        etcdkeys.delete_keys(self.etcd_url, added)
        crd_groups = {key.split("/")[-1].split(".", 1)[1] for key in added
                      if key.startswith("/registry/apiextensions.k8s.io/customresourcedefinitions/")}
        if crd_groups:
            self._wait_groups_gone(crd_groups, timeout)
        return added

    def _wait_groups_gone(self, groups, timeout):
        """A deleted CRD's handler goes asynchronously; the next test may create the same CRD again at once."""
        import kubernetes  # pylint: disable=import-outside-toplevel
        with self._client() as api:
            apis = kubernetes.client.ApisApi(api)
            _wait(lambda: not groups & {group.name for group in apis.get_api_versions().groups}, timeout,
                  "the apiserver to stop serving %s" % ", ".join(sorted(groups)))


class RealBackend:  # pylint: disable=too-few-public-methods
    """What a test sees of the real backend: the same attributes as the emulator fixture's `url` and `kubeconfig`."""

    backend = "real"

    def __init__(self, plane):
        self.url, self.kubeconfig, self.plane = plane.url, plane.kubeconfig, plane


def api_client(cluster):
    """A new `kubernetes.client.ApiClient` for the test's cluster (the emulator: plain HTTP; the real control plane:
    TLS and the admin's client certificate, from its kubeconfig)."""
    import kubernetes  # pylint: disable=import-outside-toplevel
    if cluster.backend == "real":
        return kubernetes.config.new_client_from_config(config_file=cluster.kubeconfig)
    configuration = kubernetes.client.Configuration()
    configuration.host = cluster.url
    return kubernetes.client.ApiClient(configuration)


def _wait(check, timeout, what):
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out after %.0fs waiting for %s" % (timeout, what))
        time.sleep(0.2)


def get_cluster_object(kube_client, group, plural, name, version="v1alpha1"):
    """The cluster-scoped custom object ``name``, or None when there is none."""
    import kubernetes  # pylint: disable=import-outside-toplevel
    try:
        return kubernetes.client.CustomObjectsApi(kube_client).get_cluster_custom_object(group, version, plural, name)
    except kubernetes.client.exceptions.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def install_crds(kube_client, names=None, timeout=120.0):
    """Create our CRDs (all, or those named) and wait until each is Established and its objects can be listed: a real
    apiserver serves a new CRD a moment after accepting it, and a test's first write must not race that."""
    import kubernetes  # pylint: disable=import-outside-toplevel
    from plugins.module_utils import crd_manifests  # pylint: disable=import-outside-toplevel
    extensions = kubernetes.client.ApiextensionsV1Api(kube_client)
    custom = kubernetes.client.CustomObjectsApi(kube_client)
    manifests = crd_manifests.crds(names) if names else crd_manifests.crds()
    for manifest in manifests:
        extensions.create_custom_resource_definition(manifest)
    for manifest in manifests:
        spec = manifest["spec"]
        version = next(v["name"] for v in spec["versions"] if v.get("served", True))

        def served(spec=spec, version=version):
            try:
                custom.list_cluster_custom_object(spec["group"], version, spec["names"]["plural"], limit=1)
            except kubernetes.client.exceptions.ApiException:
                return False
            return True
        _wait(served, timeout, "the apiserver to serve %s" % manifest["metadata"]["name"])
