#!/usr/bin/env bash
# Stop the cluster scripts/cluster-up.sh started and put the host back as it was: Pods are
# deleted through the API first (so the kubelet tears sandboxes down: CNI DEL, unmounts), then
# each process is stopped by the PID cluster-up recorded (SIGTERM, SIGKILL after 10 s), leftover
# containers of its containerd are killed, and the kubelet's mounts, the Pods' network
# namespaces and veths, the bridge, the KUBE-* iptables chains, the sysctls and empty cgroups
# are removed or restored. Cached builds and images stay (/opt/k8s/bin, containerd's store).
# Usage: scripts/cluster-down.sh        WIPE=1 also forgets the cluster's state (etcd, PKI, kubelet)
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=k8s/cluster-env.sh
. "$ROOT/scripts/k8s/cluster-env.sh"
export PATH="$FUSED_K8S_BIN:$PATH" KUBECONFIG=$KUBECONFIG_PATH
PIDS=$CLUSTER_DIR/pids
CTR=(ctr -a "$CONTAINERD_SOCK" -n k8s.io)
stop() { # <name>: by its recorded PID
  local file=$PIDS/$1.pid pid
  [ -f "$file" ] || return 0
  pid=$(cat "$file")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null
  fi
  rm -f "$file"
}

# Pods first, while the kubelet still runs, so it tears them down cleanly.
if [ -f "$PIDS/kubelet.pid" ] && kubectl get --raw /readyz >/dev/null 2>&1; then
  kubectl delete deployments,replicasets,daemonsets,statefulsets,jobs --all -A --wait=false >/dev/null 2>&1
  kubectl delete pods --all -A --grace-period=1 --wait=false >/dev/null 2>&1
  for _ in $(seq 60); do [ -z "$("${CTR[@]}" tasks ls -q 2>/dev/null)" ] && break; sleep 0.5; done
fi
for ((i = ${#CLUSTER_PROCESSES[@]} - 1; i >= 1; i--)); do stop "${CLUSTER_PROCESSES[$i]}"; done
# What the kubelet did not tear down (also runs CNI DEL when containerd removes a sandbox).
if [ -S "$CONTAINERD_SOCK" ]; then
  for task in $("${CTR[@]}" tasks ls -q 2>/dev/null); do "${CTR[@]}" tasks kill -s KILL "$task" 2>/dev/null; done
  sleep 1
  for task in $("${CTR[@]}" tasks ls -q 2>/dev/null); do "${CTR[@]}" tasks delete -f "$task" >/dev/null 2>&1; done
  for c in $("${CTR[@]}" containers ls -q 2>/dev/null); do "${CTR[@]}" containers delete "$c" >/dev/null 2>&1; done
fi
stop containerd
[ -x "$FUSED_K8S_BIN/kube-proxy" ] && "$FUSED_K8S_BIN/kube-proxy" --cleanup >/dev/null 2>&1
# Mounts of the kubelet and containerd, the Pods' network namespaces, veths and the bridge.
awk '{print $2}' /proc/mounts | grep -E "^($CLUSTER_DIR/kubelet|$RUN_DIR|$CONTAINERD_DIR/root|/run/netns/cni-)" \
  | sort -r | while read -r m; do umount -l "$m" 2>/dev/null; done
for ns in $(ip netns list 2>/dev/null | awk '/^cni-/{print $1}'); do ip netns delete "$ns" 2>/dev/null; done
for veth in $(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
  ip link delete "$veth" 2>/dev/null
done
ip link show "$BRIDGE" >/dev/null 2>&1 && ip link delete "$BRIDGE"
rm -rf "$CLUSTER_DIR/cni/ipam"
rm -f /var/lib/cni/results/fused-* /var/lib/cni/results/cni-loopback-*   # libcni's cache of killed sandboxes
# kubelet and kube-proxy leave KUBE-* chains (KUBE-FIREWALL, KUBE-MARK-*) even after --cleanup.
for table in filter nat mangle; do
  iptables -t "$table" -S 2>/dev/null | grep -E '^-A (INPUT|OUTPUT|FORWARD|PREROUTING|POSTROUTING) .*-j KUBE-' \
    | sed 's/^-A/-D/' | while read -r rule; do eval "iptables -t $table $rule"; done
  chains=$(iptables -t "$table" -S 2>/dev/null | awk '/^-N KUBE-/{print $2}')
  for chain in $chains; do iptables -t "$table" -F "$chain"; done
  for chain in $chains; do iptables -t "$table" -X "$chain"; done
done
[ -f "$CLUSTER_DIR/sysctl.orig" ] && sysctl -q -p "$CLUSTER_DIR/sysctl.orig" && rm -f "$CLUSTER_DIR/sysctl.orig"
for hierarchy in /sys/fs/cgroup/*/; do
  for d in kubepods k8s.io; do
    [ -d "$hierarchy$d" ] && find "$hierarchy$d" -depth -type d -exec rmdir {} \; 2>/dev/null
  done
done
if [ "${WIPE:-0}" = 1 ]; then
  if grep -q " $CLUSTER_DIR/" /proc/mounts; then
    echo "cluster-down: something is still mounted under $CLUSTER_DIR; not wiping it" >&2
  else
    rm -rf --one-file-system "$CLUSTER_DIR"
  fi
fi
echo "cluster-down: stopped" >&2
