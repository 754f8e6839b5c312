"""The sandbox scheduler's assume cache: a binding the watch has not shown yet still counts."""

from sandbox.scheduler import SandboxScheduler


class StaleInformer:
    """Always returns the objects it was given: the watch never catches up."""

    def __init__(self, items):
        self._items = items

    def items(self):
        return list(self._items)


class RecordingCore:
    def __init__(self):
        self.bindings = []

    def create_namespaced_pod_binding(self, name, namespace, body, **_kwargs):
        self.bindings.append((name, body["target"]["name"]))

    def patch_namespaced_pod_status(self, *_args, **_kwargs):
        pass

    def list_node(self, **_kwargs):      # the informers are replaced before they could list
        raise AssertionError("not listed in this test")

    list_pod_for_all_namespaces = list_node


def pod(name, cpu):
    return {"metadata": {"name": name, "namespace": "default", "uid": "uid-" + name, "creationTimestamp": name},
            "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]}, "status": {"phase": "Pending"}}


def test_a_stale_cache_does_not_overcommit_a_node_across_cycles():
    core = RecordingCore()
    scheduler = SandboxScheduler(core)
    node = {"metadata": {"name": "n1", "labels": {}}, "spec": {}, "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "10"}}}
    scheduler.nodes = StaleInformer([node])
    first = pod("a", "3")
    scheduler.pods = StaleInformer([first])
    assert scheduler.schedule_once() == 1
    # the watch has not delivered the binding; a second pod arrives that fits only if "a" is forgotten
    scheduler.pods = StaleInformer([first, pod("b", "3")])
    assert scheduler.schedule_once() == 0
    assert core.bindings == [("a", "n1")]
