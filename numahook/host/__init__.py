"""Adapters to the host: sysfs, cgroupfs, procfs, hugepages, RT scheduling, libvirt's status files.

Layering and what each package may import: docs/architecture.md.
"""
