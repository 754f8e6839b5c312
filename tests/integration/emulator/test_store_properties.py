"""Properties of the emulator's store and watch, on random write sequences (in-process, no HTTP: fast).

A controller's informer relies on two things: resourceVersions only grow, and a list followed by a watch from
the list's resourceVersion (with or without a selector) rebuilds exactly what a later list shows.
"""

from hypothesis import given, settings, strategies as st

from sandbox.kubeapi.api import APIError, KubeAPI

NAMES = ["a", "b", "c"]
OPS = st.lists(st.tuples(st.sampled_from(["create", "label", "unlabel", "delete"]), st.sampled_from(NAMES)), max_size=25)


def apply(api, nodes, op, name):
    """One write; returns the resourceVersion it produced, or None when the API refused it."""
    try:
        if op == "create":
            obj = api.create(nodes, None, {"metadata": {"name": name, "labels": {"pool": "x"}}, "spec": {}})
        elif op == "label":
            obj = api.patch(nodes, None, name, {"metadata": {"labels": {"pool": "x", "n": name + "1"}}}, "application/merge-patch+json")
        elif op == "unlabel":
            obj = api.patch(nodes, None, name, {"metadata": {"labels": {"pool": None}}}, "application/merge-patch+json")
        else:
            obj = api.delete(nodes, None, name)
    except APIError as exc:
        assert exc.code in (404, 409)
        return None
    return int(obj["metadata"]["resourceVersion"])


def replay(api, nodes, start, selector, base):
    state = {o["metadata"]["name"]: o for o in base}
    for event in api.watch(nodes, None, str(start), label_selector=selector, timeout=0):
        name = event["object"]["metadata"]["name"]
        if event["type"] == "DELETED":
            del state[name]
        else:
            assert (event["type"] == "ADDED") == (name not in state)
            state[name] = event["object"]
    return state


@settings(max_examples=60, deadline=None)
@given(before=OPS, after=OPS, selector=st.sampled_from([None, "pool=x", "!pool", "n"]))
def test_list_then_watch_rebuilds_the_later_list(before, after, selector):
    api = KubeAPI()
    nodes = api.registry.get("", "v1", "nodes")
    for op, name in before:
        apply(api, nodes, op, name)
    listing = api.list(nodes, None, label_selector=selector)
    last = int(listing["metadata"]["resourceVersion"])
    for op, name in after:
        previous = api.store.get(nodes.storage_key, "", name)
        rv = apply(api, nodes, op, name)
        if rv is None:
            continue
        if previous is not None and rv == int(previous["metadata"]["resourceVersion"]):
            assert api.store.rv == last      # a no-op write keeps the object's resourceVersion and writes nothing
        else:
            assert rv > last                 # every change gets a larger resourceVersion than anything before it
            last = rv
    state = replay(api, nodes, listing["metadata"]["resourceVersion"], selector, listing["items"])
    final = api.list(nodes, None, label_selector=selector)["items"]
    assert state == {o["metadata"]["name"]: o for o in final}


@settings(max_examples=40, deadline=None)
@given(ops=OPS, limit=st.integers(min_value=1, max_value=4))
def test_pages_concatenate_to_the_full_list(ops, limit):
    api = KubeAPI()
    nodes = api.registry.get("", "v1", "nodes")
    for op, name in ops:
        apply(api, nodes, op, name)
    pages, token = [], None
    while True:
        page = api.list(nodes, None, limit=limit, continue_token=token)
        pages.extend(page["items"])
        token = page["metadata"].get("continue")
        if not token:
            break
    assert pages == api.list(nodes, None)["items"]


@settings(max_examples=30, deadline=None)
@given(ops=OPS, bound=st.integers(min_value=1, max_value=6))
def test_watch_from_a_compacted_revision_is_gone(ops, bound):
    api = KubeAPI(history_limit=bound)
    nodes = api.registry.get("", "v1", "nodes")
    start = api.store.rv
    for op, name in ops:
        apply(api, nodes, op, name)
    writes = api.store.rv - start     # no-op updates do not count: they store nothing
    events = list(api.watch(nodes, None, str(start), timeout=0))
    if writes > bound:
        assert [e["type"] for e in events] == ["ERROR"] and events[0]["object"]["code"] == 410
    else:
        assert len(events) == writes
