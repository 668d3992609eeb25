"""numahook: KubeVirt's NUMA passthrough and real-time tuning for plain libvirt/QEMU hosts."""

__version__ = "0.1.0"

#: The XML namespace of our ``<metadata>`` element. Stable: domains carry it for years.
NAMESPACE = "https://numahook.io/xmlns/domain/1"

#: ``schema_version`` of every JSON document numahook writes: the ``--json`` of ``check``,
#: ``status`` and ``node``, and numahookd's node.json (docs/json.md, docs/schemas/).
SCHEMA_VERSION = 1

#: Where the packages install the JSON Schema of each of those documents (docs/schemas/ in
#: the source tree): what ``--help`` names, since an operator has the package, not the tree.
SCHEMA_DIR = "/usr/share/numahook/schemas"
#: Where the packages install examples/ (domain XML to start from).
EXAMPLES_DIR = "/usr/share/doc/numahook/examples"
