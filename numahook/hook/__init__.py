"""The libvirt qemu hook (``/etc/libvirt/hooks/qemu.d/numahook``), behind its shell front."""
