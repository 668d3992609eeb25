"""numahook: KubeVirt's NUMA passthrough and real-time tuning for plain libvirt/QEMU hosts."""

__version__ = "0.1.0"

#: The XML namespace of our ``<metadata>`` element. Stable: domains carry it for years.
NAMESPACE = "https://numahook.io/xmlns/domain/1"
