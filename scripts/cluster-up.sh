#!/usr/bin/env bash
# A real one-node Kubernetes v1.20 on this host, for the end-to-end tests and for trying the
# operator: containerd (cgroupfs) + runc, a bridge CNI network, etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kubelet and kube-proxy (iptables), plus an HTTP server
# on the node that serves the model cache to Pods. Uses only loopback and its own bridge
# (fusedk8s0, 10.244.0.0/24; Services 10.96.0.0/24): nothing is sent off the host. Every process
# it starts is recorded by PID and stopped by scripts/cluster-down.sh. Layout and ports:
# scripts/k8s/cluster-env.sh. Binaries come from scripts/setup-k8s.sh --node (built once from
# Debian's sources, cached in /opt/k8s); the sandbox image is built here (scripts/images/pause.sh).
# No DNS add-on (CoreDNS is not packaged): use ClusterIPs, `<SVC>_SERVICE_HOST` or Pod IPs.
# With --operator it then builds the images (scripts/build-images.sh) and installs both charts
# with charts/fused-operator/values-local.yaml: the local way to try the operator.
# Running it again is harmless: what runs is left running, what is missing is started.
# Usage: scripts/cluster-up.sh [--operator]   (root; prints `export KUBECONFIG=...` last)
set -euo pipefail
WITH_OPERATOR=0
case "${1:-}" in
  --operator) WITH_OPERATOR=1 ;;
  "") ;;
  *) echo "usage: $0 [--operator]" >&2; exit 2 ;;
esac
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=k8s/cluster-env.sh
. "$ROOT/scripts/k8s/cluster-env.sh"
# shellcheck source=images/lib.sh
. "$ROOT/scripts/images/lib.sh"
export PATH="$FUSED_K8S_BIN:$PATH" KUBECONFIG=$KUBECONFIG_PATH
T0=$(date +%s)
say() { echo "cluster-up: [$(( $(date +%s) - T0 ))s] $*" >&2; }
PIDS=$CLUSTER_DIR/pids LOGS=$CLUSTER_DIR/log
running() { [ -f "$PIDS/$1.pid" ] && kill -0 "$(cat "$PIDS/$1.pid")" 2>/dev/null; }
start() { # <name> <command...>: in the background, logged and recorded by PID
  local name=$1; shift
  running "$name" && return 0
  "$@" >"$LOGS/$name.log" 2>&1 &
  echo $! >"$PIDS/$name.pid"
}
wait_until() { # <name> <timeout-s> <command...>: polls every 0.5 s; on timeout shows the log
  local name=$1 timeout=$2 deadline; shift 2
  deadline=$(( $(date +%s) + timeout ))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ] || { [ -f "$PIDS/$name.pid" ] && ! running "$name"; }; then
      echo "cluster-up: $name did not come up; the end of $LOGS/$name.log:" >&2
      tail -25 "$LOGS/$name.log" >&2 || true
      exit 1
    fi
    sleep 0.5
  done
  say "$name ready"
}

[ "$(id -u)" = 0 ] || { echo "cluster-up: needs root (containerd, kubelet, iptables, a bridge)" >&2; exit 1; }
"$ROOT/scripts/setup-k8s.sh" --node >/dev/null
mkdir -p "$PIDS" "$LOGS" "$CLUSTER_DIR/pki" "$CLUSTER_DIR/cni/net.d" "$CONTAINERD_DIR" "$RUN_DIR"

# --- host settings this cluster needs; the values found are restored by cluster-down.sh
[ -f "$CLUSTER_DIR/sysctl.orig" ] || for key in net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables \
    net.ipv4.conf.all.route_localnet; do
  echo "$key=$(sysctl -n "$key" 2>/dev/null || echo 0)"
done >"$CLUSTER_DIR/sysctl.orig"
modprobe br_netfilter 2>/dev/null || true
sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1

# --- the bridge exists before the kubelet starts: its address is the node's (the kubelet
# refuses loopback as node IP, and no dummy interface is available on these machines)
if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
  ip link add "$BRIDGE" type bridge
  ip addr add "$NODE_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
fi
# Pods get two routes: the Pod network (on the bridge) and the Service network (via the node, where
# kube-proxy's rules take over). No default route: nothing leaves the host.
cat >"$CLUSTER_DIR/cni/net.d/10-fused.conflist" <<EOF
{"cniVersion": "0.4.0", "name": "fused", "plugins": [
  {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$CLUSTER_DIR/cni/ipam",
            "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
            "routes": [{"dst": "$SERVICE_CIDR"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
EOF

# --- containerd with the CRI plugin. These machines lack CAP_SYS_RESOURCE: runc cannot lower a
# sandbox's oom_score_adj, and without restrict_oom_score_adj every sandbox fails with
# "can't get final child's PID from pipe: EOF".
cat >"$CONTAINERD_DIR/config.toml" <<EOF
version = 2
root = "$CONTAINERD_DIR/root"
state = "$RUN_DIR/containerd"
[grpc]
  address = "$CONTAINERD_SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/pause:3.2"
  enable_selinux = false
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$CLUSTER_DIR/cni/net.d"
EOF
start containerd containerd --config "$CONTAINERD_DIR/config.toml"
wait_until containerd 30 ctr -a "$CONTAINERD_SOCK" version
# The sandbox image, and the project's images if scripts/build-images.sh already built them.
image_to_containerd "$("$ROOT/scripts/images/pause.sh")"
for image in $(buildah images --format '{{.Name}}:{{.Tag}}' 2>/dev/null | grep -E '^localhost/fused-(daemon|operator):'); do
  image_to_containerd "$image"
done

# --- credentials: a CA, the API server's serving cert, its client cert for kubelets, the
# ServiceAccount signing key, and an admin token
cd "$CLUSTER_DIR/pki"
if [ ! -f tokens.csv ]; then
  sign() { # <name> <subject> <extensions>
    openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
    printf '%s' "$3" >"$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -out "$1.crt" -days 3650 \
      -extfile "$1.ext" 2>/dev/null
  }
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 -subj /CN=fused-k8s-ca 2>/dev/null
  sign apiserver /CN=kube-apiserver "$(printf 'subjectAltName=IP:127.0.0.1,IP:10.96.0.1,IP:%s,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' "$NODE_IP")"
  sign kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" \
    "$(printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n')"
  openssl genrsa -out sa.key 2048 2>/dev/null && openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  echo "$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'),admin,admin,system:masters" >tokens.csv
fi
cd "$ROOT"
cat >"$KUBECONFIG_PATH" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: fused
  cluster: {server: "https://$NODE_IP:$API_PORT", certificate-authority-data: "$(base64 -w0 "$CLUSTER_DIR/pki/ca.crt")"}
users:
- name: admin
  user: {token: "$(cut -d, -f1 "$CLUSTER_DIR/pki/tokens.csv")"}
contexts:
- name: fused
  context: {cluster: fused, user: admin}
current-context: fused
EOF
chmod 600 "$KUBECONFIG_PATH"

# --- control plane. The API server listens on the node address, not 127.0.0.1: only then does
# the `kubernetes` Service (10.96.0.1:443) get an endpoint that Pods (the operator) can reach.
start etcd etcd --name fused --data-dir "$CLUSTER_DIR/etcd" --unsafe-no-fsync \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "fused=http://127.0.0.1:$ETCD_PEER_PORT" --listen-metrics-urls "http://127.0.0.1:$ETCD_METRICS_PORT"
wait_until etcd 30 curl -sf "http://127.0.0.1:$ETCD_PORT/health"
P=$CLUSTER_DIR/pki
start apiserver kube-apiserver --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
  --bind-address="$NODE_IP" --advertise-address="$NODE_IP" --secure-port="$API_PORT" --insecure-port=0 \
  --tls-cert-file="$P/apiserver.crt" --tls-private-key-file="$P/apiserver.key" --client-ca-file="$P/ca.crt" \
  --token-auth-file="$P/tokens.csv" --authorization-mode=Node,RBAC \
  --service-account-issuer=https://kubernetes.default.svc --service-account-key-file="$P/sa.pub" \
  --service-account-signing-key-file="$P/sa.key" --service-cluster-ip-range="$SERVICE_CIDR" \
  --kubelet-client-certificate="$P/kubelet-client.crt" --kubelet-client-key="$P/kubelet-client.key" \
  --kubelet-preferred-address-types=InternalIP --allow-privileged=false
wait_until apiserver 120 kubectl get --raw /readyz
start controller-manager kube-controller-manager --kubeconfig="$KUBECONFIG_PATH" --leader-elect=false \
  --port=0 --secure-port=0 --service-account-private-key-file="$P/sa.key" --root-ca-file="$P/ca.crt" \
  --use-service-account-credentials=false
start scheduler kube-scheduler --kubeconfig="$KUBECONFIG_PATH" --leader-elect=false --port=0 --secure-port=0

# --- the node
cat >"$CLUSTER_DIR/kubelet-config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
authentication: {anonymous: {enabled: false}, webhook: {enabled: false}, x509: {clientCAFile: $P/ca.crt}}
authorization: {mode: AlwaysAllow}
cgroupDriver: cgroupfs
failSwapOn: false
resolvConf: /etc/resolv.conf
volumePluginDir: $CLUSTER_DIR/kubelet/volume-plugins
serializeImagePulls: false
evictionHard: {memory.available: "100Mi", nodefs.available: "2%", imagefs.available: "2%"}
EOF
start kubelet kubelet --config="$CLUSTER_DIR/kubelet-config.yaml" --kubeconfig="$KUBECONFIG_PATH" \
  --container-runtime=remote --container-runtime-endpoint="unix://$CONTAINERD_SOCK" --runtime-request-timeout=5m \
  --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" --root-dir="$CLUSTER_DIR/kubelet" \
  --cert-dir="$CLUSTER_DIR/kubelet/pki" --pod-infra-container-image=localhost/pause:3.2 --v=1
# NodePorts only on the bridge address (never on loopback, where other tests listen); no
# conntrack tuning, so the host's settings stay as they were.
start kube-proxy kube-proxy --kubeconfig="$KUBECONFIG_PATH" --hostname-override="$NODE_NAME" \
  --proxy-mode=iptables --cluster-cidr="$POD_CIDR" --bind-address="$NODE_IP" \
  --nodeport-addresses="$NODE_IP/32" --healthz-bind-address="127.0.0.1:$PROXY_HEALTHZ_PORT" \
  --metrics-bind-address="127.0.0.1:$PROXY_METRICS_PORT" --conntrack-max-per-core=0 \
  --conntrack-tcp-timeout-established=0 --conntrack-tcp-timeout-close-wait=0
# The model cache over HTTP on the node address, for the FusedModels' fetch init containers.
"$ROOT/scripts/fetch-model.sh" >/dev/null
start files python3 -m http.server --bind "$NODE_IP" --directory "$FILES_DIR" "$FILES_PORT"
wait_until files 30 curl -sf -o /dev/null "http://$NODE_IP:$FILES_PORT/"

node_ready() {
  kubectl get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' | grep -qx True
}
wait_until kubelet 300 node_ready
wait_until kube-proxy 60 curl -sf "http://127.0.0.1:$PROXY_HEALTHZ_PORT/healthz"
wait_until controller-manager 120 kubectl get serviceaccount default -n default
say "cluster up; node $NODE_NAME ($NODE_IP), models at http://$NODE_IP:$FILES_PORT/"
if [ "$WITH_OPERATOR" = 1 ]; then
  "$ROOT/scripts/build-images.sh"
  helm upgrade --install fused-crds "$ROOT/charts/fused-crds" --wait >/dev/null
  helm upgrade --install fused-operator "$ROOT/charts/fused-operator" -n fused-system --create-namespace \
    -f "$ROOT/charts/fused-operator/values-local.yaml" --wait --timeout 5m >/dev/null
  say "operator running (helm releases fused-crds, fused-operator in fused-system)"
fi
echo "export KUBECONFIG=$KUBECONFIG_PATH"
