"""The node in words: why it is or is not real-time capable, and the CLI's table."""

from __future__ import annotations

from collections.abc import Sequence

from numahook.config import DEFAULT_PATH
from numahook.core import cpulist
from numahook.core.units import human_kib
from numahook.node.model import CPU_PARAMS, CpuParam, NodeCapability, NodeInfo, size_name

#: where the kernel keeps each node's pools (the advice's commands write there)
NODE_POOL = "/sys/devices/system/node/node{node}/hugepages/hugepages-{size}kB/nr_hugepages"


def reasons(cap: NodeCapability, config_path: str = DEFAULT_PATH) -> list[str]:
    """Sentences saying why the node is or is not real-time capable, each with its fix.

    The first is always KubeVirt's test; the others say what else decides how well a
    real-time guest runs here. ``config_path`` is named where a fix is a config change.
    """
    out: list[str] = []
    rt = cap.sched_rt_runtime_us
    if cap.realtime_capable:
        out.append("kernel.sched_rt_runtime_us is -1: RT throttling is off, so SCHED_FIFO "
                   "vCPUs may run unthrottled and this node is real-time capable")
    else:
        out.append(f"kernel.sched_rt_runtime_us is {rt}: RT throttling is on; run `sysctl -w "
                   "kernel.sched_rt_runtime_us=-1` (and persist it in /etc/sysctl.d/) to make "
                   "this node real-time capable")
    policy = cap.start_policy
    if policy.mode == "refuse":
        out.append("real-time domains are refused here because RT group scheduling would give "
                   "libvirt's vCPU cgroups no budget; set throttled = delegate under [realtime] "
                   f"in {config_path} to let numahook delegate budget instead")
    elif not policy.ok:
        out.append(policy.reason)
    elif policy.mode == "delegate":
        free = cap.rt_budget.available_us if cap.rt_budget else 0
        out.append(f"real-time domains still start here because numahook delegates RT group "
                   f"budget ({free} us per period is free for them), split between their "
                   "real-time vCPUs; turn throttling off as above to give them full CPUs")
    if not cap.preempt_rt:
        out.append("the kernel is not PREEMPT_RT (/sys/kernel/realtime is not 1), so latency "
                   "is best effort; boot a PREEMPT_RT kernel (linux-image-rt-amd64 or "
                   "kernel-rt) for hard real-time guests")
    if not cap.isolcpus:
        out.append("no CPUs are isolated from the scheduler; add isolcpus=managed_irq,domain,"
                   "<cpus> nohz_full=<cpus> rcu_nocbs=<cpus> to the kernel command line and "
                   "reboot to keep host work off real-time vCPUs")
    else:
        missing = [name for name, cpus in (("nohz_full", cap.nohz_full),
                                           ("rcu_nocbs", cap.rcu_nocbs))
                   if not cap.isolcpus <= cpus]
        if missing:
            cpus = cpulist.format(cap.isolcpus)
            out.append(f"isolated CPUs {cpus} are not all in {' and '.join(missing)}, so the "
                       "timer tick or RCU callbacks still interrupt them; add "
                       + " ".join(f"{m}={cpus}" for m in missing)
                       + " to the kernel command line")
    out += hugepage_reasons(cap)
    if cap.libvirt_reachable is False:
        out.append(f"libvirt at {cap.libvirt_uri} is not reachable; start libvirtd or virtqemud "
                   "(or fix libvirt_uri under [daemon])")
    return out


def hugepage_reasons(cap: NodeCapability) -> list[str]:
    """What to do about hugepages on this host, fitted to it: the page sizes a hugetlbfs is
    mounted for (libvirt backs guests only with those), each node's memory, and the fact
    that numahook reserves a domain's pages on its nodes when it starts.

    An empty pool is therefore not a fault: it is said, with an example reservation that
    fits a node, only for those who want memory set aside before it fragments. A fixed
    example (4 pages of 1 GiB) told hosts with 1.5 GiB nodes and only a 2 MiB hugetlbfs
    to reserve more than a node holds, in a size nothing could map.
    """
    sizes = cap.page_sizes()
    if not sizes:
        return ["no NUMA node offers hugepages (no hugepages-* pools under "
                "/sys/devices/system/node/node*/hugepages), so numahook can reserve none and "
                "domains on hugepages cannot start here; boot a kernel built with "
                "CONFIG_HUGETLBFS and CONFIG_NUMA"]
    mounted = sorted({m.pagesize_kib for m in cap.hugetlbfs} & set(sizes))
    reserved = [s for s in sizes if any(p.nr for p in cap.hugepages if p.size_kib == s)]
    if not mounted:
        size = reserved[0] if reserved else sizes[0]
        unused = (f" (the {' and '.join(human_kib(s) for s in reserved)} pages reserved "
                  "here go unused)" if reserved else "")
        return [f"no hugetlbfs is mounted, so libvirt can back no domain with hugepages"
                f"{unused}; mount one with pagesize={size_name(size)[:-1]} before libvirtd "
                f"starts, such as the /etc/fstab line `hugetlbfs /dev/hugepages hugetlbfs "
                f"pagesize={size_name(size)[:-1]} 0 0`, and numahook reserves each domain's "
                "pages at its start"]
    out = [f"{human_kib(size)} hugepages are reserved but no hugetlbfs is mounted with that page "
           f"size; mount one (pagesize={size_name(size)[:-1]}) before libvirtd starts, from "
           "/etc/fstab" for size in reserved if size not in mounted]
    nodes = [n for n in cap.nodes if n.memory_kib > 0]
    fitting = [s for s in mounted if any(n.memory_kib >= s for n in nodes)]
    for size in mounted:
        if size not in fitting and nodes:
            largest = max(n.memory_kib for n in nodes)
            out.append(f"the hugetlbfs for {human_kib(size)} pages serves no domain here: a "
                       f"page is larger than any NUMA node's memory (at most {largest // 1024} "
                       f"MiB); mount one with pagesize={size_name(sizes[0])[:-1]} instead")
    if fitting and not any(p.free for p in cap.hugepages if p.size_kib in mounted):
        out.append(_reserve_example(fitting, nodes))
    return out


def _reserve_example(sizes: list[int], nodes: list[NodeInfo]) -> str:
    """No free page in any mounted size: say why that is fine, and how to reserve anyway,
    in the smallest mounted size, on the first node, half of its memory (one page at least)."""
    size = sizes[0]
    node = next(n for n in nodes if n.memory_kib >= size)
    count = max(1, node.memory_kib // size // 2)
    memory = {n.memory_kib // 1024 for n in nodes}
    if len(nodes) == 1:
        per_node = f"node{node.id} has {node.memory_kib // 1024} MiB"
    elif len(memory) == 1:
        per_node = f"nodes {cpulist.format(n.id for n in nodes)} have {memory.pop()} MiB each"
    else:
        per_node = "node" + ", node".join(f"{n.id} has {n.memory_kib // 1024} MiB" for n in nodes)
    text = (f"no {' or '.join(human_kib(s) for s in sizes)} hugepages are free, and none need "
            "to be: numahook reserves each domain's pages on its nodes when it starts, from "
            f"their free memory ({per_node}); to set memory aside before it fragments, "
            f"reserve some per node, such as `echo {count} > "
            f"{NODE_POOL.format(node=node.id, size=size)}` ({human_kib(count * size)} of "
            f"node{node.id}'s {node.memory_kib // 1024} MiB)")
    if size >= 1024 * 1024:
        # the kernel's own advice (admin-guide/mm/hugetlbpage): gigantic pages are reliably
        # found only at boot, before memory fragments
        text += (f", or at boot, where {human_kib(size)} pages are still contiguous, with "
                 f"hugepagesz={size_name(size)[:-1]} hugepages=N on the kernel command line")
    return text


def _yes(flag: bool | None) -> str:
    return "unknown" if flag is None else "yes" if flag else "no"


def _param(p: CpuParam) -> str:
    if p.raw is None:
        return "not set"
    text = f"{cpulist.format(p.cpus) or 'none'} ({len(p.cpus)} CPUs)"
    return f"{text}, flags {','.join(p.flags)}" if p.flags else text


def report_lines(cap: NodeCapability) -> list[tuple[str, str]]:
    """(fact, value) pairs for the CLI table, in reading order."""
    rows: list[tuple[str, str]] = [
        ("real-time capable", f"{_yes(cap.realtime_capable)} (kernel.sched_rt_runtime_us = "
                              f"{cap.sched_rt_runtime_us}, period {cap.sched_rt_period_us} us)"),
        ("real-time starts", f"{'allowed' if cap.start_policy.ok else 'refused'} "
                             f"({cap.start_policy.mode}): {cap.start_policy.reason}"),
        ("RT group scheduling", _yes(cap.rt_group_sched)
         + (", domains need delegated budget" if cap.needs_group_budget else "")),
    ]
    b = cap.rt_budget
    if b is not None:
        text = f"root {b.root_runtime_us} us ({b.root_free_us} free)"
        if b.machine_group:
            text += f", {b.machine_group} {b.machine_runtime_us} us ({b.machine_free_us} free)"
        rows.append(("RT budget", f"{text}; {b.available_us} us per period available"))
    rows += [
        ("PREEMPT_RT", _yes(cap.preempt_rt)),
        ("kernel", cap.kernel_release or "unknown"),
        *((name, _param(cap.cmdline[name])) for name in CPU_PARAMS),
        ("cgroup", f"v{cap.cgroup_version}"),
        ("CPUs online", f"{cpulist.format(cap.online_cpus)} ({len(cap.online_cpus)})"),
        ("CPUs shared", (f"{cpulist.format(cap.shared_cpus)} ([cpus] shared: shared emulators and "
                         "floating vCPUs run there, never dedicated)") if cap.shared_cpus else
         "none ([cpus] shared is unset, so emulatorThreadPolicy='share' and dedicatedMask "
         "are refused)"),
        ("NUMA nodes", f"{len(cap.nodes)}: " + "; ".join(
            f"node{n.id} CPUs {cpulist.format(n.cpus) or 'none'}, {n.memory_kib // 1024} MiB"
            for n in cap.nodes)),
    ]
    for n in cap.nodes:
        pools = [p for p in cap.hugepages if p.node == n.id]
        if pools:
            rows.append((f"hugepages node{n.id}", "; ".join(
                f"{size_name(p.size_kib)}: {p.free} free of {p.nr}"
                + (f" ({p.surplus} surplus)" if p.surplus else "") for p in pools)))
    rows.append(("hugetlbfs", ", ".join(
        f"{m.path} ({size_name(m.pagesize_kib)}{'' if m.explicit else ', default'})"
        for m in cap.hugetlbfs) or "none mounted"))
    reach = {True: "reachable", False: "not reachable", None: "unknown"}[cap.libvirt_reachable]
    rows.append(("libvirt", f"{reach} ({cap.libvirt_uri})"))
    return rows


def text_report(cap: NodeCapability, more: Sequence[tuple[str, str]] = ()) -> str:
    """The readable report: one line per fact, then the reasons and any warnings.

    ``more``: rows the node probe cannot know, after its own (``numahook node``'s free
    dedicated CPUs per node, from the claims: ops/holders.py)."""
    rows = report_lines(cap) + list(more)
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    lines.append("reasons:")
    lines += [f"  - {r}" for r in cap.reasons]
    if cap.warnings:
        lines.append("warnings:")
        lines += [f"  - {w}" for w in cap.warnings]
    return "\n".join(lines)


def verdict(cap: NodeCapability) -> str:
    """The one-line verdict: KubeVirt's test, and with it what a real-time start gets here.

    ``realtime_capable`` (the sysctl is -1) is the verdict everywhere: the report's first
    line, the JSON, the NFD label and the metric; ``--check`` exits by it.
    """
    policy = cap.start_policy
    starts = f"real-time starts {'allowed' if policy.ok else 'refused'} ({policy.mode})"
    if cap.realtime_capable:
        return f"real-time capable; {starts}"
    return f"not real-time capable: {cap.reasons[0]}; {starts}"
