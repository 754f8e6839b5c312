#!/usr/bin/python
# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE); modules are also offered under the
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: oom_hook
short_description: Build, load and pin the eBPF OOM observer and the OOM priority map
version_added: 0.1.0
description:
  - Compiles the CO-RE OOM observer (C(oom_observer.bpf.c)) with clang against the running kernel's BTF
    (C(/sys/kernel/btf/vmlinux), via C(bpftool btf dump)), loads it through the system libbpf and pins its maps and
    links under O(pin_dir), namely the Katalyst-compatible priority map C(oom_priority) (key u64 cgroup id, value s64
    priority) and the kill records C(oom_events). Pinned links stay attached after this module exits.
  - C(fentry/oom_kill_process) (victim points and OOM domain) is used where the kernel allows BPF trampolines;
    otherwise C(tp_btf/mark_victim) alone.
  - Idempotent, so nothing is rebuilt or reloaded while the same object is attached. A reload keeps the
    priority map's entries.
  - C(katalyst-agent) keeps the priority map in sync with the node's pods and explains every recorded kill.
options:
  state:
    description: C(present) builds and loads; C(absent) detaches the programs and removes the pinned maps.
    type: str
    choices: [present, absent]
    default: present
  source:
    description: Path of C(oom_observer.bpf.c) on the node. One of O(source) and O(object) is required with O(state=present).
    type: path
  object:
    description:
      - A compiled object to load instead of building from O(source) (built elsewhere, for example on the Ansible
        controller with O(load=false), so nodes need no compiler; CO-RE objects load on other kernel versions).
    type: path
  load:
    description: With C(false), only build O(source) (returns RV(object)) and load nothing.
    type: bool
    default: true
  build_dir:
    description: Where C(vmlinux.h) and the compiled objects are kept.
    type: path
    default: /var/lib/katalyst/bpf
  pin_dir:
    description: Directory on a mounted bpffs for the pins (the agent's C(oom_bpf_pin_dir)).
    type: path
    default: /sys/fs/bpf/katalyst
  keep_priority_map:
    description: With O(state=absent), leave the priority map pinned (for a kernel policy that reads it).
    type: bool
    default: false
extends_documentation_fragment:
  - katalyst.colocation.attributes
attributes:
  check_mode:
    description: Reports whether it would build, load or unload.
  diff_mode:
    description: Shows the attached programs before and after.
  platform:
    support: full
    description: Linux nodes with BTF, bpffs, clang, bpftool and libbpf1.
    platforms: posix
notes:
  - Needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN). The O(pin_dir) must be on a mounted bpffs (the C(oom_hook) role mounts one).
seealso:
  - module: katalyst.colocation.oom_priority
author:
  - katalyst.colocation contributors (@katalyst-colocation)
"""

EXAMPLES = r"""
- name: Load the OOM observer
  katalyst.colocation.oom_hook:
    source: /opt/katalyst/bpf/oom_observer.bpf.c

- name: Unload it
  katalyst.colocation.oom_hook:
    state: absent
"""

RETURN = r"""
programs:
  description: Programs attached after the run.
  returned: always
  type: list
  elements: str
  sample: [on_mark_victim]
object:
  description: The compiled object that is (or would be) loaded.
  returned: when O(state=present)
  type: str
  sample: /var/lib/katalyst/bpf/oom_observer.daad298b1d5b1a3d.bpf.o
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.katalyst.colocation.plugins.module_utils import bpf

STATE_FILE = "loaded.json"


def read_state(build_dir):
    try:
        with open(os.path.join(build_dir, STATE_FILE)) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return {}


def present(module, params):
    if bool(params["source"]) == bool(params["object"]):
        module.fail_json(msg="state=present needs exactly one of source and object")
    given = params["source"] or params["object"]
    if not os.path.exists(given):
        module.fail_json(msg="%s does not exist" % given)
    before = bpf.loaded_programs(params["pin_dir"])
    if params["load"] and not bpf.is_bpffs(os.path.dirname(params["pin_dir"].rstrip("/")) or "/"):
        module.fail_json(msg="%s is not on a mounted bpffs (mount -t bpf bpffs %s)" % (params["pin_dir"], os.path.dirname(params["pin_dir"])))
    state = read_state(params["build_dir"])
    if params["object"]:
        obj, built = params["object"], False
    elif module.check_mode:
        obj = bpf.object_path(params["source"], params["build_dir"])
        built = not os.path.exists(obj)
    else:
        try:
            obj, built = bpf.build_observer(params["source"], params["build_dir"])
        except (bpf.BPFError, OSError) as exc:
            module.fail_json(msg=str(exc))
    if not params["load"]:
        return built, before, before, obj
    digest = bpf.file_digest(obj) if os.path.exists(obj) else None
    if before and state.get("digest") == digest:
        return built, before, before, obj
    if module.check_mode:
        return True, before, list(bpf.PROGRAMS), obj
    try:
        after = bpf.load_observer(obj, params["pin_dir"])
    except (bpf.BPFError, OSError) as exc:
        module.fail_json(msg=str(exc), programs=before)
    with open(os.path.join(params["build_dir"], STATE_FILE), "w") as handle:
        json.dump({"object": obj, "digest": digest, "programs": after}, handle)
    return True, before, after, obj


def main():
    module = AnsibleModule(argument_spec={
        "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
        "source": {"type": "path"},
        "object": {"type": "path"},
        "load": {"type": "bool", "default": True},
        "build_dir": {"type": "path", "default": "/var/lib/katalyst/bpf"},
        "pin_dir": {"type": "path", "default": bpf.DEFAULT_PIN_DIR},
        "keep_priority_map": {"type": "bool", "default": False},
    }, supports_check_mode=True, mutually_exclusive=[("source", "object")])
    params = module.params
    if not module.check_mode:
        os.makedirs(params["build_dir"], exist_ok=True)
    result = {}
    if params["state"] == "present":
        changed, before, after, obj = present(module, params)
        result["object"] = obj
    else:
        before = bpf.loaded_programs(params["pin_dir"])
        pins = [os.path.join(params["pin_dir"], name) for name in
                ["link_" + p for p in bpf.PROGRAMS] + [bpf.EVENTS_MAP] + ([] if params["keep_priority_map"] else [bpf.PRIORITY_MAP])]
        changed = any(os.path.exists(pin) for pin in pins)
        if changed and not module.check_mode:
            bpf.unload_observer(params["pin_dir"], params["keep_priority_map"])
            try:
                os.remove(os.path.join(params["build_dir"], STATE_FILE))
            except OSError:
                pass
        after = []
    result.update(changed=changed, programs=after)
    if module._diff:
        result["diff"] = {"before": {"programs": before}, "after": {"programs": after}}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
