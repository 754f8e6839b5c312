// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
// katalyst.colocation OOM observer: records every OOM kill with what the priority map says about the
// victim's cgroup, so the agent can explain each kill and count priority inversions.
//
// Maps (pinned by name under the loader's pin directory, /sys/fs/bpf/katalyst by default):
//   oom_priority  HASH u64 cgroup id -> s64 priority: the Katalyst-compatible map the agent keeps in sync
//                 (a kernel with a BPF OOM policy reads it; stock kernels only let us observe).
//   oom_events    HASH u32 pid -> struct oom_event: one record per kill; the agent reads and deletes them.
// Programs:
//   fentry/oom_kill_process  the chosen task, its points and the OOM domain (needs BPF trampolines)
//   tp_btf/mark_victim       every kill, on kernels (or hosts) where fentry is not allowed
// Built CO-RE against the running kernel's vmlinux.h:
//   clang -O2 -g -target bpf -D__TARGET_ARCH_x86 -I<dir with vmlinux.h> -c oom_observer.bpf.c
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#define COMM_LEN 16
#define SOURCE_FENTRY 1
#define SOURCE_MARK_VICTIM 2
#define NO_PRIORITY (-0x7fffffffffffffffLL - 1)

struct oom_event {
	__u64 timestamp_ns;      // bpf_ktime_get_ns() at the kill (CLOCK_MONOTONIC)
	__u64 cgroup_id;         // cgroup v2 (default hierarchy) id of the victim
	__u64 memory_cgroup_id;  // cgroup v1 memory controller id of the victim (0 on pure v2)
	__u64 domain_cgroup_id;  // memory cgroup that ran out (0: the whole node, or unknown from mark_victim)
	__s64 priority;          // oom_priority map entry for the victim's cgroup, NO_PRIORITY when absent
	__s64 points;            // oom_badness points of the victim, -1 when unknown
	__u32 pid;
	__s32 oom_score_adj;
	__u32 source;            // SOURCE_FENTRY or SOURCE_MARK_VICTIM (the first that saw it)
	__u32 domain_known;      // 1 when domain_cgroup_id is meaningful
	char comm[COMM_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __s64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} oom_priority SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct oom_event);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} oom_events SEC(".maps");

static __always_inline __u64 memory_cgroup_id(struct task_struct *task)
{
	if (!bpf_core_enum_value_exists(enum cgroup_subsys_id, memory_cgrp_id))
		return 0;
	int memory = bpf_core_enum_value(enum cgroup_subsys_id, memory_cgrp_id);
	// task may be an untrusted pointer (fentry's oc->chosen): every step goes through probe reads
	struct css_set *cgroups = BPF_CORE_READ(task, cgroups);
	struct cgroup_subsys_state *css = 0;
	if (!cgroups)
		return 0;
	bpf_probe_read_kernel(&css, sizeof(css), &cgroups->subsys[memory]);
	if (!css)
		return 0;
	return BPF_CORE_READ(css, cgroup, kn, id);
}

static __always_inline __s64 lookup_priority(__u64 memory_id, __u64 default_id)
{
	__s64 *priority = 0;
	if (memory_id)
		priority = bpf_map_lookup_elem(&oom_priority, &memory_id);
	if (!priority)
		priority = bpf_map_lookup_elem(&oom_priority, &default_id);
	return priority ? *priority : NO_PRIORITY;
}

static __always_inline void record(struct task_struct *task, __s64 points, __u64 domain_id, __u32 domain_known, __u32 source)
{
	__u32 pid = BPF_CORE_READ(task, tgid);
	struct oom_event *seen = bpf_map_lookup_elem(&oom_events, &pid);
	if (seen) {
		// mark_victim after fentry: keep fentry's richer record
		if (source == SOURCE_FENTRY && seen->source != SOURCE_FENTRY) {
			seen->points = points;
			seen->domain_cgroup_id = domain_id;
			seen->domain_known = domain_known;
			seen->source = source;
		}
		return;
	}
	struct oom_event event = {};
	event.timestamp_ns = bpf_ktime_get_ns();
	event.pid = pid;
	event.cgroup_id = BPF_CORE_READ(task, cgroups, dfl_cgrp, kn, id);
	event.memory_cgroup_id = memory_cgroup_id(task);
	event.domain_cgroup_id = domain_id;
	event.domain_known = domain_known;
	event.priority = lookup_priority(event.memory_cgroup_id, event.cgroup_id);
	event.points = points;
	event.oom_score_adj = BPF_CORE_READ(task, signal, oom_score_adj);
	event.source = source;
	BPF_CORE_READ_STR_INTO(&event.comm, task, comm);
	bpf_map_update_elem(&oom_events, &pid, &event, BPF_NOEXIST);
}

SEC("fentry/oom_kill_process")
int BPF_PROG(on_oom_kill_process, struct oom_control *oc, const char *message)
{
	struct task_struct *victim = BPF_CORE_READ(oc, chosen);
	struct mem_cgroup *memcg = BPF_CORE_READ(oc, memcg);
	__u64 domain_id = memcg ? BPF_CORE_READ(memcg, css.cgroup, kn, id) : 0;
	if (victim)
		record(victim, BPF_CORE_READ(oc, chosen_points), domain_id, 1, SOURCE_FENTRY);
	return 0;
}

// The tracepoint's prototype changed in 6.8: (struct task_struct *, uid_t) since, (int pid) before.
// On old kernels only the pid is known here; the agent fills in the rest from its own view.
SEC("tp_btf/mark_victim")
int BPF_PROG(on_mark_victim)
{
	if (bpf_core_field_exists(struct trace_event_raw_mark_victim, uid)) {
		struct task_struct *task = (struct task_struct *)ctx[0];
		record(task, -1, 0, 0, SOURCE_MARK_VICTIM);
	} else {
		__u32 pid = (__u32)ctx[0];
		struct oom_event event = {};
		event.timestamp_ns = bpf_ktime_get_ns();
		event.pid = pid;
		event.priority = NO_PRIORITY;
		event.points = -1;
		event.source = SOURCE_MARK_VICTIM;
		bpf_map_update_elem(&oom_events, &pid, &event, BPF_NOEXIST);
	}
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
