//! End-to-end harnesses: a real kube-apiserver on loopback and the real daemon.
