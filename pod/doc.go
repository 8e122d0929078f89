// Package pod is the model of the pod metadata the control plane publishes
// in etcd for the agents: a pod's labels, container ports, node and service
// account (pods/<node>/<namespace>/<name>), and a namespace's labels
// (namespaces/<namespace>). An agent derives a local pod's security
// identity from them: the CNI plugin tells it only the pod's namespace and
// name. It is pure: no I/O.
//
// Pods are keyed by node first so that an agent watches only the pods of
// its own node (one watch on pods/<node>/): with 5,000 nodes and 100,000
// pods, a watch on every pod would send each label change to every agent.
// Namespaces are few and every agent needs the ones its pods are in, so an
// agent watches all of them.
//
// Encode, Decode and Key fit kvstore's typed stores and caches: Key is
// relative to the pods/ (namespaces/) prefix, and Decode checks that the
// key names the value, so a value copied under another key is refused.
package pod
