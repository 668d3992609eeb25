"""End-to-end tests against a real libvirtd, QEMU and guest (the lab, see lab/)."""
