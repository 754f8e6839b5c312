"""The resource types the emulator serves: a table of built-ins plus whatever CRDs establish."""

import threading

VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


class ResourceType:
    """One served resource (group/version/plural) and what the API server knows about it."""

    def __init__(self, group, version, plural, kind, namespaced, short_names=(), status=False, singular=None,
                 generation=False, crd=None, extra_subresources=()):
        self.group = group
        self.version = version
        self.plural = plural
        self.kind = kind
        self.namespaced = namespaced
        self.short_names = list(short_names)
        self.status = status
        self.singular = singular or kind.lower()
        self.generation = generation
        self.crd = crd
        self.extra_subresources = list(extra_subresources)

    @property
    def api_version(self):
        return "%s/%s" % (self.group, self.version) if self.group else self.version

    @property
    def storage_key(self):
        """Objects are stored per group+plural (all served versions of a CRD share storage)."""
        return "%s/%s" % (self.group, self.plural)

    def discovery(self):
        entries = [{"name": self.plural, "singularName": self.singular, "namespaced": self.namespaced, "kind": self.kind,
                    "verbs": VERBS, "shortNames": self.short_names}]
        if self.status:
            entries.append({"name": self.plural + "/status", "singularName": "", "namespaced": self.namespaced,
                            "kind": self.kind, "verbs": ["get", "patch", "update"]})
        for sub, kind, verbs in self.extra_subresources:
            entries.append({"name": "%s/%s" % (self.plural, sub), "singularName": "", "namespaced": self.namespaced,
                            "kind": kind, "verbs": verbs})
        return entries


def builtin_types():
    """The types every emulator serves, before any CRD."""
    core = [
        ResourceType("", "v1", "namespaces", "Namespace", False, ["ns"], status=True),
        ResourceType("", "v1", "nodes", "Node", False, ["no"], status=True),
        ResourceType("", "v1", "pods", "Pod", True, ["po"], status=True, generation=True,
                     extra_subresources=[("binding", "Binding", ["create"]), ("eviction", "Eviction", ["create"])]),
        ResourceType("", "v1", "events", "Event", True, ["ev"]),
        ResourceType("", "v1", "configmaps", "ConfigMap", True, ["cm"]),
        ResourceType("", "v1", "secrets", "Secret", True),
        ResourceType("", "v1", "serviceaccounts", "ServiceAccount", True, ["sa"],
                     extra_subresources=[("token", "TokenRequest", ["create"])]),
        ResourceType("", "v1", "services", "Service", True, ["svc"], status=True),
    ]
    groups = [
        ResourceType("events.k8s.io", "v1", "events", "Event", True, ["ev"]),
        ResourceType("coordination.k8s.io", "v1", "leases", "Lease", True),
        ResourceType("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", True),
        ResourceType("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False,
                     ["crd", "crds"], status=True, generation=True),
        ResourceType("admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations",
                     "MutatingWebhookConfiguration", False, generation=True),
        ResourceType("admissionregistration.k8s.io", "v1", "validatingwebhookconfigurations",
                     "ValidatingWebhookConfiguration", False, generation=True),
        ResourceType("apps", "v1", "deployments", "Deployment", True, ["deploy"], status=True, generation=True),
        ResourceType("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", True, ["pdb"], status=True, generation=True),
        # stored and served, never enforced: the emulator has no authorizer (the real backend has RBAC)
        ResourceType("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False),
        ResourceType("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False),
        ResourceType("rbac.authorization.k8s.io", "v1", "roles", "Role", True),
        ResourceType("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", True),
    ]
    return core + groups


class Registry:
    """Lookup of served types; CRDs add and remove theirs at runtime."""

    def __init__(self):
        self.lock = threading.RLock()
        self.types = {}
        for rtype in builtin_types():
            self.types[(rtype.group, rtype.version, rtype.plural)] = rtype

    def get(self, group, version, plural):
        with self.lock:
            return self.types.get((group, version, plural))

    def by_kind(self, api_version, kind):
        group, _sep, version = api_version.rpartition("/")
        with self.lock:
            for rtype in self.types.values():
                if rtype.group == group and rtype.version == version and rtype.kind == kind:
                    return rtype
        return None

    def groups(self):
        """{group: [versions]} for /apis, the preferred version first (a CRD's storage version)."""
        with self.lock:
            result = {}
            for rtype in self.types.values():
                if rtype.group:
                    versions = result.setdefault(rtype.group, [])
                    if rtype.version not in versions:
                        versions.append(rtype.version)
            return result

    def group_versions(self):
        """Every served (group, version), the core group first."""
        with self.lock:
            return sorted({(t.group, t.version) for t in self.types.values()})

    def in_group_version(self, group, version):
        with self.lock:
            return sorted((t for t in self.types.values() if t.group == group and t.version == version), key=lambda t: t.plural)

    def register_crd(self, crd):
        """Serve every served version of ``crd``; returns the types added."""
        spec = crd["spec"]
        names = spec["names"]
        added = []
        with self.lock:
            self.unregister_crd(crd["metadata"]["name"])
            for version in spec.get("versions") or []:
                if not version.get("served", True):
                    continue
                rtype = ResourceType(spec["group"], version["name"], names["plural"], names["kind"],
                                     spec.get("scope", "Namespaced") == "Namespaced", names.get("shortNames") or [],
                                     status="status" in (version.get("subresources") or {}), singular=names.get("singular"),
                                     generation=True, crd=crd["metadata"]["name"])
                self.types[(rtype.group, rtype.version, rtype.plural)] = rtype
                added.append(rtype)
        return added

    def unregister_crd(self, crd_name):
        with self.lock:
            for key in [k for k, t in self.types.items() if t.crd == crd_name]:
                del self.types[key]
