# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)


class ModuleDocFragment:
    # The attributes the modules share. A module's own `attributes:` entry is merged over the fragment's (its
    # description wins): a module names the fragments and describes only what its check and diff modes do.

    # a module that changes things, with full check and diff mode support
    DOCUMENTATION = r"""
options: {}
attributes:
  check_mode:
    support: full
    description: Can run in check mode and report what would change without changing it.
  diff_mode:
    support: full
    description: Returns what changed (or would change in check mode) before and after when run with diff.
"""

    # a module that only reads (katalyst.colocation.attributes.info_module)
    INFO_MODULE = r"""
options: {}
attributes:
  check_mode:
    support: full
    description: Changes nothing, so runs the same in check mode.
  diff_mode:
    support: none
    description: Changes nothing, so has no diff to show.
"""

    # katalyst.colocation.attributes.kubernetes
    KUBERNETES = r"""
options: {}
attributes:
  platform:
    support: full
    description: Runs against the Kubernetes API.
    platforms: kubernetes
"""

    # katalyst.colocation.attributes.node_files
    NODE_FILES = r"""
options: {}
attributes:
  platform:
    support: full
    description: Runs against a Linux node's kernel files (or a sandbox sysroot).
    platforms: posix
"""
