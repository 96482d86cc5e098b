# The local cluster's layout, shared by cluster-up.sh and cluster-down.sh (sourced). One host;
# only loopback, the cluster's own bridge and the Pods' network namespaces are used.
FUSED_K8S_BIN=${FUSED_K8S_DIR:-/opt/k8s/bin}
# Cluster state (PKI, etcd data, kubelet root, logs, PIDs, kubeconfig); WIPE=1 cluster-down.sh removes it.
CLUSTER_DIR=${FUSED_CLUSTER_DIR:-/opt/k8s/cluster}
# containerd's image store survives cluster-down (images are not imported again).
CONTAINERD_DIR=${FUSED_CONTAINERD_DIR:-/opt/k8s/containerd}
RUN_DIR=/run/fused-k8s
CONTAINERD_SOCK=$RUN_DIR/containerd/containerd.sock
BRIDGE=fusedk8s0
NODE_NAME=fused-node
NODE_IP=10.244.0.1          # the bridge's address: the node, the API server, the file server
POD_CIDR=10.244.0.0/24
SERVICE_CIDR=10.96.0.0/24   # 10.96.0.1 is the `kubernetes` Service
ETCD_PORT=22379; ETCD_PEER_PORT=22380; ETCD_METRICS_PORT=22381
API_PORT=26443
KUBELET_PORT=20250; KUBELET_HEALTHZ_PORT=20248
PROXY_METRICS_PORT=20249; PROXY_HEALTHZ_PORT=20256
# An HTTP server on the node serving the model cache read-only to Pods (examples/ fetch from it).
FILES_PORT=28090
FILES_DIR=${FUSED_MODEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fusedmodel/models}
KUBECONFIG_PATH=$CLUSTER_DIR/kubeconfig
# Processes in the order they start; cluster-down.sh stops them in reverse.
CLUSTER_PROCESSES=(containerd etcd apiserver controller-manager scheduler kubelet kube-proxy files)
