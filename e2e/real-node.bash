# shellcheck shell=bash
# The real node of the local control plane: `e2e/cluster up --real-node`.
# Sourced by e2e/cluster (uses its STATE, PKI, BIN, log, die, sign, start,
# stop_batch, wait_condition, ...).
#
# One kubelet (built from the same k8s.io/kubernetes module as the API
# server) joins the cluster as node $REAL_NODE_NAME and runs real containers
# with containerd, runc and the CNI plugins, all built from the Go modules
# pinned in e2e/harness/runtime/go.mod. No registry: the sandbox (pause) and
# task (busybox) images are made here as docker-archive tarballs and
# imported into containerd. The node is tainted
# baton.dev/real-node=true:NoSchedule, so only pods that tolerate it land
# on it; the kwok nodes stay for everything else.
#
# Everything lives under $STATE/real-node, except what the kubelet,
# containerd, runc and the CNI plugins write wherever their configuration
# says (REAL_NODE_PATHS) and the kernel settings the kubelet and the bridge
# plugin change (REAL_NODE_SYSCTLS): `up` records what was there before it
# started anything (real-node/machine.orig), `down` removes what was not
# and restores the settings.

RN="$STATE/real-node"
RN_PORTS="$RN/ports.env"
REAL_NODE_NAME=baton-real-node
REAL_NODE_TAINT=baton.dev/real-node
REAL_COMPONENTS=(containerd kubelet kube-proxy)
RUNTIME_HARNESS="$HARNESS/runtime"
# The pod network: one Linux bridge, addresses from host-local IPAM.
REAL_NODE_BRIDGE=baton0
REAL_NODE_POD_SUBNET=10.89.0.0/24
# Written by the kubelet, containerd, runc or libcni outside their
# configured dirs (hardcoded paths).
REAL_NODE_PATHS=(/var/lib/kubelet /run/containerd /run/runc /var/lib/cni /run/netns
	/var/log/pods /var/log/containers /opt/containerd /run/nri /opt/nri /etc/nri
	/usr/libexec/kubernetes /run/mount)
# Set by the kubelet at start (unless protectKernelDefaults) and by the
# bridge plugin (ip_forward, for isGateway).
REAL_NODE_SYSCTLS=(vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops
	kernel/keys/root_maxkeys kernel/keys/root_maxbytes net/ipv4/ip_forward
	net/ipv4/conf/all/route_localnet net/netfilter/nf_conntrack_max
	net/netfilter/nf_conntrack_tcp_timeout_established net/netfilter/nf_conntrack_tcp_timeout_close_wait)

load_runtime_versions() {
	local mod="$RUNTIME_HARNESS/go.mod"
	CONTAINERD_VERSION="$(modver "$mod" github.com/containerd/containerd/v2)"
	RUNC_VERSION="$(modver "$mod" github.com/opencontainers/runc)"
	CNI_VERSION="$(modver "$mod" github.com/containernetworking/plugins)"
	# The pause binary is ours: its version is a hash of its source.
	PAUSE_VERSION="$(cat "$RUNTIME_HARNESS/pause/main.go" | sha256sum | cut -c1-12)"
	KUBEPROBE_VERSION="$(cat "$RUNTIME_HARNESS/kubeprobe/main.go" | sha256sum | cut -c1-12)"
}

containerd_dir() { echo "$BIN/containerd-$CONTAINERD_VERSION"; }
cni_dir() { echo "$BIN/cni-plugins-$CNI_VERSION"; }

# apt_install <what for> <package>...: installs Debian packages the real
# node needs.
apt_install() {
	local why="$1"
	shift
	log "installing Debian's $* ($why)"
	{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null; } ||
		die "could not install $*"
}

# real_node_build: builds the runtime pieces that are not cached; returns
# 1 when everything was cached.
real_node_build() {
	local cd cni specs=() built=1
	cd="containerd-$CONTAINERD_VERSION"
	cni="cni-plugins-$CNI_VERSION"
	local spec
	for spec in \
		"$cd/containerd=github.com/containerd/containerd/v2/cmd/containerd" \
		"$cd/containerd-shim-runc-v2=github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2" \
		"$cd/ctr=github.com/containerd/containerd/v2/cmd/ctr" \
		"$cni/bridge=github.com/containernetworking/plugins/plugins/main/bridge" \
		"$cni/loopback=github.com/containernetworking/plugins/plugins/main/loopback" \
		"$cni/host-local=github.com/containernetworking/plugins/plugins/ipam/host-local" \
		"pause=baton.dev/e2e/harness/runtime/pause" \
		"kubeprobe=baton.dev/e2e/harness/runtime/kubeprobe"; do
		[[ -x $(dest_of "${spec%%=*}") ]] || specs+=("$spec")
	done
	if ((${#specs[@]})); then
		# No btrfs, devmapper, zfs or aufs snapshotters: overlayfs only,
		# and no C libraries needed.
		GO_TAGS=no_btrfs,no_devmapper,no_zfs,no_aufs go_build "$RUNTIME_HARNESS" containerd "${specs[@]}"
		built=0
	fi
	if [[ ! -x $(bin_of runc) ]]; then
		# runc's nsenter is C, and its seccomp support (containerd gives
		# every sandbox the RuntimeDefault profile) needs libseccomp: cgo,
		# linked with Debian's libseccomp.
		command -v gcc >/dev/null || die "building runc needs gcc (apt-get install gcc)"
		if ! pkg-config --exists libseccomp 2>/dev/null; then
			apt_install "runc's seccomp support" libseccomp-dev pkg-config
		fi
		GO_CGO=1 GO_TAGS=seccomp go_build "$RUNTIME_HARNESS" runc "runc=github.com/opencontainers/runc"
		built=0
	fi
	return $built
}

have_rn_ports() { [[ -f $RN_PORTS ]] && . "$RN_PORTS"; [[ -n ${KUBELET_PORT:-} ]]; }

# node_ip: the kubelet refuses a loopback address; the first global IPv4
# address of the machine (BATON_E2E_NODE_IP overrides it). The API server
# reaches the kubelet there (InternalIP).
node_ip() {
	if [[ -n ${BATON_E2E_NODE_IP:-} ]]; then
		echo "$BATON_E2E_NODE_IP"
		return
	fi
	ip -4 -o addr show scope global | awk '{ sub(/\/.*/, "", $4); print $4; exit }'
}

cgroup_probe() {
	if [[ -d /sys/fs/cgroup/memory ]]; then echo /sys/fs/cgroup/memory/baton-e2e-probe; else echo /sys/fs/cgroup/baton-e2e-probe; fi
}

# real_node_unmet: why this machine cannot run the real node (prints
# nothing when it can).
real_node_unmet() {
	if [[ $(id -u) != 0 ]]; then
		echo "needs root (the kubelet and runc create cgroups, mounts and network namespaces)"
	elif ! grep -qw overlay /proc/filesystems; then
		echo "needs overlayfs (modprobe overlay)"
	elif [[ ! -d /sys/fs/cgroup/memory && ! -f /sys/fs/cgroup/cgroup.controllers ]]; then
		echo "needs cgroups (the v1 memory controller or v2)"
	elif ! mkdir "$(cgroup_probe)" 2>/dev/null || ! rmdir "$(cgroup_probe)"; then
		echo "needs to create cgroups ($(dirname "$(cgroup_probe)") is not writable: an unprivileged container?)"
	elif ! command -v ip >/dev/null; then
		echo "needs ip (iproute2)"
	elif ! command -v apt-get >/dev/null && ! { command -v nft >/dev/null && [[ -x /bin/busybox ]]; }; then
		echo "needs nft (nftables) and /bin/busybox (busybox-static)"
	elif [[ -z $(node_ip) ]]; then
		echo "needs a global IPv4 address for the node (or BATON_E2E_NODE_IP)"
	fi
}

# resolve_real_node: REAL_NODE=auto becomes 1 when this machine can run the
# real node and 0 otherwise; the reason is kept in $REAL_NODE_SKIPPED,
# where the real-node tests read why they were skipped.
REAL_NODE_SKIPPED="$STATE/real-node.skipped"
resolve_real_node() {
	case "$REAL_NODE" in
	1 | required) REAL_NODE=1; return 0 ;;
	auto) ;;
	*) REAL_NODE=0; return 0 ;;
	esac
	local why
	why="$(real_node_unmet)"
	if [[ -n $why ]]; then
		mkdir -p "$STATE"
		echo "this machine cannot run the real node: it $why" >"$REAL_NODE_SKIPPED"
		log "no real node: it $why"
		REAL_NODE=0
	else
		REAL_NODE=1
	fi
}

real_node_check() {
	local why
	why="$(real_node_unmet)"
	[[ -z $why ]] || die "--real-node $why"
	rm -f "$REAL_NODE_SKIPPED"
	if ! command -v nft >/dev/null; then
		apt_install "kube-proxy's nftables mode" nftables
	fi
	if [[ ! -x /bin/busybox ]] || ! /bin/busybox --list >/dev/null 2>&1; then
		apt_install "the task image's shell" busybox-static
	fi
}

# record_machine: what was on the machine before the real node first
# started (kept until down has cleaned up).
record_machine() {
	[[ -f $RN/machine.orig ]] && return 0
	local p s
	{
		for p in "${REAL_NODE_PATHS[@]}"; do [[ -e $p || -L $p ]] && echo "path $p"; done
		for s in "${REAL_NODE_SYSCTLS[@]}"; do echo "sysctl $s $(cat "/proc/sys/$s")"; done
		ip link show "$REAL_NODE_BRIDGE" >/dev/null 2>&1 && echo "link $REAL_NODE_BRIDGE"
		local fam
		for fam in ip ip6; do nft list table "$fam" kube-proxy >/dev/null 2>&1 && echo "nft $fam kube-proxy"; done
		for p in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do [[ -d $p ]] && echo "path $p"; done
	} >"$RN/machine.orig.tmp"
	mv "$RN/machine.orig.tmp" "$RN/machine.orig"
}

gen_real_node_certs() {
	mkdir -p "$PKI/real-node"
	[[ -f $PKI/real-node/kubelet-client.crt ]] ||
		sign real-node/kubelet-client "/O=system:nodes/CN=system:node:$REAL_NODE_NAME" "extendedKeyUsage=clientAuth"
	[[ -f $PKI/real-node/kube-proxy.crt ]] ||
		sign real-node/kube-proxy "/CN=system:kube-proxy" "extendedKeyUsage=clientAuth"
	# The serving certificate names the node's address, which may change.
	if [[ ! -f $PKI/real-node/kubelet.crt ]] ||
		! openssl x509 -in "$PKI/real-node/kubelet.crt" -noout -ext subjectAltName 2>/dev/null | grep -q "IP Address:$NODE_IP\$"; then
		sign real-node/kubelet "/CN=system:node:$REAL_NODE_NAME" "extendedKeyUsage=serverAuth
subjectAltName=IP:$NODE_IP,DNS:$REAL_NODE_NAME"
	fi
}

write_containerd_config() {
	mkdir -p "$RN/containerd" "$RN/cni/net.d"
	cat >"$RN/containerd/config.toml" <<EOF
# Written by e2e/cluster up --real-node.
version = 3
root = "$RN/containerd/root"
state = "$RN/containerd/state"
# NRI and the opt plugin write under /run, /opt and /etc; not needed here.
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.internal.v1.opt"]

[grpc]
  address = "$RN/containerd/containerd.sock"

[plugins."io.containerd.cri.v1.runtime"]
  # Root here may lack CAP_SYS_RESOURCE: without this every sandbox fails
  # with "runc create failed: can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  enable_selinux = false
  # Pods' network namespaces under the state dir, not /run/netns.
  netns_mounts_under_state_dir = true
  enable_cdi = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["$(cni_dir)"]
    conf_dir = "$RN/cni/net.d"
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "$(bin_of runc)"
        Root = "$RN/runc"
        SystemdCgroup = false

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "$PAUSE_IMAGE"

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
EOF
	cat >"$RN/cni/net.d/10-baton-e2e.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "baton-e2e",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$REAL_NODE_BRIDGE",
      "isGateway": true,
      "isDefaultGateway": true,
      "ipMasq": false,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$REAL_NODE_POD_SUBNET"}]],
        "dataDir": "$RN/cni/ipam"
      }
    }
  ]
}
EOF
}

write_kubelet_config() {
	mkdir -p "$RN/kubelet"
	write_kubeconfig "$RN/kubelet.kubeconfig" real-node/kubelet-client
	cat >"$RN/kubelet.yaml" <<EOF
# Written by e2e/cluster up --real-node.
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: "$NODE_IP"
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
tlsCertFile: "$PKI/real-node/kubelet.crt"
tlsPrivateKeyFile: "$PKI/real-node/kubelet.key"
# Only the API server (its kubelet client certificate, see the
# ClusterRoleBinding baton-e2e:kubelet-api) and other holders of the
# cluster's certificates or tokens, each authorized by the API server.
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$PKI/ca.crt"}
authorization: {mode: Webhook}
containerRuntimeEndpoint: "unix://$RN/containerd/containerd.sock"
# cgroups v1 (hybrid) here; no systemd.
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
podLogsDir: "$RN/pod-logs"
# Not /usr/libexec/kubernetes/kubelet-plugins/volume/exec/, which the
# kubelet would create.
volumePluginDir: "$RN/volume-plugins"
registerWithTaints:
- {key: $REAL_NODE_TAINT, value: "true", effect: NoSchedule}
# The disk may be fuller than the defaults allow (10% free): evict only
# when it is nearly full, and never collect the imported images.
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
maxPods: 50
EOF
}

write_kube_proxy_config() {
	write_kubeconfig "$RN/kube-proxy.kubeconfig" real-node/kube-proxy
	# kube-proxy exits when its configuration file changes: rewritten only
	# when its content does.
	cat >"$RN/kube-proxy.yaml.new" <<EOF
# Written by e2e/cluster up --real-node.
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: "$RN/kube-proxy.kubeconfig"}
mode: nftables
hostnameOverride: $REAL_NODE_NAME
clusterCIDR: $REAL_NODE_POD_SUBNET
healthzBindAddress: "127.0.0.1:$KUBE_PROXY_HEALTHZ_PORT"
metricsBindAddress: "127.0.0.1:$KUBE_PROXY_METRICS_PORT"
# Leave the machine's conntrack settings alone.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
	if cmp -s "$RN/kube-proxy.yaml.new" "$RN/kube-proxy.yaml"; then
		rm -f "$RN/kube-proxy.yaml.new"
	else
		mv "$RN/kube-proxy.yaml.new" "$RN/kube-proxy.yaml"
	fi
}

# The control plane's settings for in-cluster clients (pods on the real
# node): the API server listens on every address and advertises the
# node's, so that the kubernetes Service's endpoint (lease reconciler) is
# reachable from pods; ServiceAccount admission mounts tokens; the
# controller manager publishes kube-root-ca.crt and runs what the chart's
# Deployment needs (REAL_NODE_CONTROLLERS). Only with --real-node.
real_node_adjust_args() {
	local i
	case "$1" in
	kube-apiserver)
		for i in "${!ARGS[@]}"; do
			case "${ARGS[$i]}" in
			--bind-address=*) ARGS[i]=--bind-address=0.0.0.0 ;;
			--advertise-address=*) ARGS[i]=--advertise-address=$NODE_IP ;;
			--disable-admission-plugins=*) ARGS[i]=--disable-admission-plugins=TaintNodesByCondition ;;
			--endpoint-reconciler-type=*) ARGS[i]=--endpoint-reconciler-type=lease ;;
			esac
		done
		# A namespace's annotations may send all its pods to the real node
		# (e2e/real_node.rs: the samples run there unchanged).
		ARGS+=(--enable-admission-plugins=PodNodeSelector,PodTolerationRestriction)
		;;
	kube-controller-manager)
		for i in "${!ARGS[@]}"; do
			case "${ARGS[$i]}" in
			--controllers=*) ARGS[i]="${ARGS[$i]},$REAL_NODE_CONTROLLERS" ;;
			esac
		done
		ARGS+=(--root-ca-file="$PKI/ca.crt")
		;;
	esac
}

# What a Deployment (the chart's) needs beyond the controllers the fake
# nodes need: Deployments, ReplicaSets, the Services' Endpoints (the API
# server's service proxy reads them) and EndpointSlices (kube-proxy), the
# PodDisruptionBudgets' status, and kube-root-ca.crt for in-cluster clients.
REAL_NODE_CONTROLLERS=deployment-controller,replicaset-controller,endpoints-controller,endpointslice-controller,disruption-controller,root-ca-certificate-publisher-controller

# real_node_control_plane: before the control plane starts: the node's
# address, the API server's certificate for it, and a restart of the
# components started without the settings above.
real_node_control_plane() {
	real_node_check
	mkdir -p "$RN"
	NODE_IP="$(node_ip)"
	[[ -n $NODE_IP ]] || die "no global IPv4 address for the real node (set BATON_E2E_NODE_IP)"
	if ! openssl x509 -in "$PKI/apiserver.crt" -noout -ext subjectAltName 2>/dev/null | grep -q "IP Address:$NODE_IP\(,\|$\)"; then
		log "signing the API server's certificate for $NODE_IP too"
		sign apiserver "/CN=kube-apiserver" \
			"extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:10.0.0.1,IP:$NODE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
	fi
	restart_without kube-apiserver "--advertise-address=$NODE_IP" "the real node's settings"
	restart_without kube-apiserver "--enable-admission-plugins=PodNodeSelector" "the real node's admission plugins"
	restart_without kube-controller-manager "--controllers=.*,$REAL_NODE_CONTROLLERS" "the real node's settings"
}

real_node_args_of() {
	case "$1" in
	containerd) ARGS=(--config "$RN/containerd/config.toml") ;;
	kubelet)
		ARGS=(--config="$RN/kubelet.yaml" --kubeconfig="$RN/kubelet.kubeconfig"
			--root-dir="$RN/kubelet" --hostname-override="$REAL_NODE_NAME" --node-ip="$NODE_IP"
			--node-labels="$REAL_NODE_TAINT=true")
		;;
	kube-proxy) ARGS=(--config="$RN/kube-proxy.yaml") ;;
	esac
}

# ctr_: containerd's client; its warnings (cgroup v1 is deprecated) go to
# logs/ctr.log, not the terminal.
ctr_() { "$(containerd_dir)/ctr" --address "$RN/containerd/containerd.sock" "$@" 2>>"$LOGS/ctr.log"; }

real_node_healthy() {
	case "$1" in
	containerd) [[ -S $RN/containerd/containerd.sock ]] && ctr_ version >/dev/null 2>&1 ;;
	kubelet) [[ $(curl -fsS --max-time 3 "http://127.0.0.1:$KUBELET_HEALTHZ_PORT/healthz" 2>/dev/null) == ok ]] ;;
	kube-proxy) curl -fsS --max-time 3 "http://127.0.0.1:$KUBE_PROXY_HEALTHZ_PORT/healthz" >/dev/null 2>&1 ;;
	esac
}

# docker_archive <out.tar> <tags, space-separated> <rootfs dir> <entrypoint as a JSON array>
# [more of the image config's "config", as JSON members with a trailing comma]:
# a one-layer image in the format `docker save` writes (a tar of the layer,
# the image config and manifest.json), which `ctr images import` reads.
docker_archive() {
	local out="$1" tags="$2" rootfs="$3" entrypoint="$4" more="${5:-}" work diff
	work="$(mktemp -d "$RN/.image.XXXXXX")"
	chmod 755 "$rootfs"
	tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$rootfs" -cf "$work/layer.tar" .
	diff="$(sha256sum <"$work/layer.tar" | cut -d' ' -f1)"
	printf '{"architecture":"amd64","os":"linux","config":{%s"Entrypoint":%s,"Env":["PATH=/bin"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
		"$more" "$entrypoint" "$diff" >"$work/config.json"
	tags="\"${tags// /\",\"}\""
	printf '[{"Config":"config.json","RepoTags":[%s],"Layers":["layer.tar"]}]' "$tags" >"$work/manifest.json"
	tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$work" -cf "$out.tmp" manifest.json config.json layer.tar
	mv "$out.tmp" "$out"
	rm -rf "$work"
}

# The images the real node runs: the sandbox's pause and a busybox for
# tasks (Debian's busybox-static, its applets as symlinks), also tagged as
# the image the samples name, so they run unchanged.
BUSYBOX_IMAGE=localhost/baton-e2e/busybox:latest
SAMPLES_BUSYBOX_IMAGE=docker.io/library/busybox:1.36
real_node_images() {
	PAUSE_IMAGE="localhost/baton-e2e/pause:$PAUSE_VERSION"
	mkdir -p "$RN/images"
	local tmp
	if [[ ! -f $RN/images/pause-$PAUSE_VERSION.tar ]]; then
		tmp="$(mktemp -d "$RN/.rootfs.XXXXXX")"
		cp "$(bin_of pause)" "$tmp/pause"
		docker_archive "$RN/images/pause-$PAUSE_VERSION.tar" "$PAUSE_IMAGE" "$tmp" '["/pause"]'
		rm -rf "$tmp"
	fi
	local bb="$RN/images/busybox-$KUBEPROBE_VERSION-2.tar"
	if [[ ! -f $bb || /bin/busybox -nt $bb ]]; then
		tmp="$(mktemp -d "$RN/.rootfs.XXXXXX")"
		mkdir -p "$tmp/bin" "$tmp/etc" "$tmp/tmp" "$tmp/dev" "$tmp/proc" "$tmp/sys"
		chmod 1777 "$tmp/tmp"
		cp /bin/busybox "$tmp/bin/busybox"
		cp "$(bin_of kubeprobe)" "$tmp/bin/kubeprobe"
		local a
		for a in $(/bin/busybox --list); do [[ $a == busybox ]] || ln -s busybox "$tmp/bin/$a"; done
		printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$tmp/etc/passwd"
		printf 'root:x:0:\nnogroup:x:65534:\n' >"$tmp/etc/group"
		docker_archive "$bb" "$BUSYBOX_IMAGE $SAMPLES_BUSYBOX_IMAGE" "$tmp" '["/bin/sh"]'
		rm -rf "$tmp"
	fi
}

import_images() {
	local have f
	have="$(ctr_ -n k8s.io images ls -q)"
	for f in "$PAUSE_IMAGE=$RN/images/pause-$PAUSE_VERSION.tar" "$BUSYBOX_IMAGE=$RN/images/busybox-$KUBEPROBE_VERSION-2.tar"; do
		if ! grep -qxF "${f%%=*}" <<<"$have" || [[ ${f#*=} -nt $RN/images/.imported-${f##*/} ]]; then
			ctr_ -n k8s.io images import --platform linux/amd64 "${f#*=}" >/dev/null || die "ctr images import ${f#*=} failed; see $LOGS/ctr.log"
			touch "$RN/images/.imported-${f##*/}"
			log "imported ${f%%=*} into containerd"
		fi
	done
}

# real_ensure_up <timeout> <component>: start it and wait until healthy.
real_ensure_up() {
	local rc=0
	start "$2"
	wait_healthy "$2" "$1" || rc=$?
	((rc == 0)) || die "$2 could not bind its port; see $LOGS/$2.log (e2e/cluster down, then up again)"
}

real_node_up() {
	local t0=$SECONDS
	have_rn_ports || true
	local n
	for n in KUBELET_PORT KUBELET_HEALTHZ_PORT KUBE_PROXY_HEALTHZ_PORT KUBE_PROXY_METRICS_PORT; do
		[[ -n ${!n:-} ]] || printf -v "$n" '%s' "$(random_port)"
	done
	printf '%s\n' "KUBELET_PORT=$KUBELET_PORT" "KUBELET_HEALTHZ_PORT=$KUBELET_HEALTHZ_PORT" \
		"KUBE_PROXY_HEALTHZ_PORT=$KUBE_PROXY_HEALTHZ_PORT" "KUBE_PROXY_METRICS_PORT=$KUBE_PROXY_METRICS_PORT" \
		"NODE_IP=$NODE_IP" >"$RN_PORTS"
	record_machine
	gen_real_node_certs
	# The API server's kubelet client certificate may use the kubelet's
	# API (logs, exec, port-forward), as kubeadm sets it up.
	kubectl --kubeconfig="$KUBECONFIG_FILE" apply -f - >/dev/null <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "baton-e2e:kubelet-api"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:kubelet-api-admin"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: kube-apiserver-kubelet-client}
EOF
	real_node_images
	write_containerd_config
	real_ensure_up 30 containerd
	import_images
	write_kubelet_config
	real_ensure_up 60 kubelet
	wait_condition 90 Ready "node/$REAL_NODE_NAME" || die "node $REAL_NODE_NAME did not become Ready; see $LOGS/kubelet.log"
	write_kube_proxy_config
	real_ensure_up 60 kube-proxy
	log "real node $REAL_NODE_NAME Ready ($NODE_IP, kubelet port $KUBELET_PORT) in $((SECONDS - t0))s"
}

real_node_status() {
	[[ -d $RN ]] || return 0
	have_rn_ports || true
	local c pid health
	for c in "${REAL_COMPONENTS[@]}"; do
		if pid="$(pid_of "$c")"; then
			if healthy "$c"; then health=ok; else health=unhealthy; fi
		else
			pid=-
			health=stopped
		fi
		printf '%-24s %-8s %-7s %-8s %s\n' "$c" "$pid" "$(port_of "$c")" "$health" "$(version_of "$c")"
	done
}

# pids_with_exe <path>: the processes running that binary.
pids_with_exe() {
	local p
	for p in /proc/[0-9]*; do
		[[ $(readlink "$p/exe" 2>/dev/null) == "$1" ]] && echo "${p#/proc/}"
	done
	return 0
}

# unmount_under <dir>...: every mount at or below the dirs, deepest first.
unmount_under() {
	local d m
	for d in "$@"; do
		[[ -e $d ]] || continue
		d="$(realpath "$d")"
		awk -v d="$d" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r |
			while IFS= read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
	done
}

# ours_since_up <path>: the path exists and was not there before the real
# node first started (real-node/machine.orig).
ours_since_up() {
	[[ -e $1 && -f $RN/machine.orig ]] && ! grep -qxF "path $1" "$RN/machine.orig"
}

real_node_down() {
	# Nothing to do unless the real node was started since the last down.
	[[ -f $RN/machine.orig || -f $PIDS/kubelet.pid || -f $PIDS/containerd.pid ]] || return 0
	have_rn_ports || true
	stop_batch kube-proxy kubelet
	# The pods' containers outlive containerd (each has its shim): kill
	# them through containerd while it runs, then the shims left over.
	if pid_of containerd >/dev/null; then
		local ns t
		for ns in $(ctr_ namespaces ls -q 2>/dev/null); do
			for t in $(ctr_ -n "$ns" tasks ls -q 2>/dev/null); do
				ctr_ -n "$ns" tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true
			done
		done
		sleep 0.5
		for ns in $(ctr_ namespaces ls -q 2>/dev/null); do
			for t in $(ctr_ -n "$ns" tasks ls -q 2>/dev/null); do
				ctr_ -n "$ns" tasks delete -f "$t" >/dev/null 2>&1 || true
			done
		done
	fi
	stop_batch containerd
	local pid f cg
	for pid in $(pids_with_exe "$(containerd_dir)/containerd-shim-runc-v2"); do
		log "killing a leftover shim (pid $pid)"
		kill -KILL "$pid" 2>/dev/null || true
	done
	# Processes still in the pods' cgroups (a container whose shim died),
	# unless another Kubernetes had those cgroups before the real node.
	for cg in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
		ours_since_up "$cg" || continue
		for f in "$cg"/cgroup.procs "$cg"/*/cgroup.procs "$cg"/*/*/cgroup.procs "$cg"/*/*/*/cgroup.procs; do
			[[ -f $f ]] || continue
			while read -r pid; do kill -KILL "$pid" 2>/dev/null || true; done <"$f"
		done
	done
	sleep 0.2
	local shared=() p
	for p in /run/containerd /run/netns /var/lib/kubelet; do ours_since_up "$p" && shared+=("$p"); done
	unmount_under "$RN" "${shared[@]}"
	# Whatever is still mounted there keeps its files: --one-file-system.
	rm -rf --one-file-system "$RN/containerd/root" "$RN/containerd/state" "$RN/kubelet" "$RN/runc" \
		"$RN/cni/ipam" "$RN/pod-logs" "$RN/volume-plugins" 2>/dev/null || log "could not remove all of $RN (still mounted?)"
	local orig="$RN/machine.orig"
	if [[ -f $orig ]]; then
		if ip link show "$REAL_NODE_BRIDGE" >/dev/null 2>&1 && ! grep -qxF "link $REAL_NODE_BRIDGE" "$orig"; then
			ip link delete "$REAL_NODE_BRIDGE" && log "deleted the bridge $REAL_NODE_BRIDGE"
		fi
		# The pods' cgroups, deepest first.
		for cg in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
			[[ -d $cg ]] || continue
			grep -qxF "path $cg" "$orig" && continue
			find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true
			[[ -d $cg ]] && log "could not remove the cgroup $cg"
		done
		local p
		for p in "${REAL_NODE_PATHS[@]}"; do
			[[ -e $p || -L $p ]] || continue
			grep -qxF "path $p" "$orig" && continue
			rm -rf --one-file-system "$p" && log "removed $p" || log "could not remove $p"
		done
		local fam
		for fam in ip ip6; do
			nft list table "$fam" kube-proxy >/dev/null 2>&1 || continue
			grep -qxF "nft $fam kube-proxy" "$orig" && continue
			nft delete table "$fam" kube-proxy && log "deleted kube-proxy's nftables table ($fam)"
		done
		local kind name value
		while read -r kind name value; do
			[[ $kind == sysctl ]] || continue
			[[ $(cat "/proc/sys/$name") == "$value" ]] && continue
			echo "$value" >"/proc/sys/$name" && log "restored ${name//\//.}=$value"
		done <"$orig"
		rm -f "$orig"
	fi
	log "real node stopped and cleaned"
}

# smoke_pod <name> <shell command>: runs a busybox pod on the real node
# until it ends; sets PHASE, LOGS_OUT (kubectl logs) and MESSAGE (the
# termination message), and deletes it.
smoke_pod() {
	local k=(kubectl --kubeconfig="$KUBECONFIG_FILE" -n default) pod="$1" t0
	t0=$EPOCHREALTIME
	"${k[@]}" apply -f - >/dev/null <<EOF2
apiVersion: v1
kind: Pod
metadata: {name: $pod}
spec:
  restartPolicy: Never
  nodeSelector: {$REAL_NODE_TAINT: "true"}
  tolerations: [{key: $REAL_NODE_TAINT, operator: Exists, effect: NoSchedule}]
  containers:
  - name: main
    image: $BUSYBOX_IMAGE
    imagePullPolicy: Never
    command: [sh, -c, '$2']
EOF2
	local deadline=$((SECONDS + 60))
	until PHASE="$("${k[@]}" get pod "$pod" -o jsonpath='{.status.phase}')" && [[ $PHASE == Succeeded || $PHASE == Failed ]]; do
		((SECONDS < deadline)) || { "${k[@]}" describe pod "$pod" >&2; die "pod $pod: phase '$PHASE' after 60s"; }
		sleep 0.2
	done
	log "pod $pod $PHASE $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')s after its create"
	LOGS_OUT="$("${k[@]}" logs "$pod")"
	MESSAGE="$("${k[@]}" get pod "$pod" -o jsonpath='{.status.containerStatuses[0].state.terminated.message}')"
	"${k[@]}" delete pod "$pod" --wait=false >/dev/null
}

# real_node_smoke: what a task needs from the real node: the command runs,
# the pod Succeeds, `kubectl logs` shows its output, the termination
# message comes back; and a pod reaches the API server through the
# kubernetes Service with its ServiceAccount token.
real_node_smoke() {
	smoke_pod "real-node-smoke-$$" 'echo hello; echo my-result > /dev/termination-log'
	[[ $PHASE == Succeeded ]] || die "the smoke pod: $PHASE"
	[[ $LOGS_OUT == hello ]] || die "kubectl logs of the smoke pod: '$LOGS_OUT', not 'hello'"
	[[ $MESSAGE == my-result ]] || die "termination message of the smoke pod: '$MESSAGE', not 'my-result'"
	log "real node OK: phase Succeeded, kubectl logs 'hello', termination message 'my-result'"
	smoke_pod "real-node-incluster-$$" 'kubeprobe whoami'
	[[ $PHASE == Succeeded && $LOGS_OUT == *'"username":"system:serviceaccount:default:default"'* ]] ||
		die "in-cluster API access from the real node: $PHASE, $LOGS_OUT"
	log "in-cluster API access OK: the pod is system:serviceaccount:default:default through https://\$KUBERNETES_SERVICE_HOST"
}

# controller_image: baton's controller image without Docker, from the
# release binary ($CARGO_TARGET_DIR/release/baton-controller, or
# BATON_CONTROLLER_BIN): the binary at the Dockerfile's path, the shared
# libraries it links (ldd) and nothing else but /etc/passwd and
# /etc/group naming the non-root user; the Dockerfile's entrypoint, user
# and exposed port. Written to target/image/baton-controller.tar and, when
# the real node runs, imported into its containerd.
CONTROLLER_IMAGE_REPO=baton-controller
controller_image() {
	local bin="${BATON_CONTROLLER_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/baton-controller}"
	[[ -x $bin ]] || die "$bin is missing: make build first"
	local version tag out="$ROOT/target/image/baton-controller.tar" tmp lib
	version="$(awk '$1 == "appVersion:" { gsub(/"/, "", $2); print $2 }' "$ROOT/charts/baton/Chart.yaml")"
	tag="docker.io/library/$CONTROLLER_IMAGE_REPO:$version"
	mkdir -p "$ROOT/target/image" "$RN"
	tmp="$(mktemp -d "$RN/.rootfs.XXXXXX")"
	cp "$bin" "$tmp/baton-controller"
	for lib in $(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
		mkdir -p "$tmp$(dirname "$lib")"
		cp -L "$lib" "$tmp$lib"
	done
	mkdir -p "$tmp/etc" "$tmp/tmp"
	chmod 1777 "$tmp/tmp"
	printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$tmp/etc/passwd"
	printf 'root:x:0:\nnonroot:x:65532:\n' >"$tmp/etc/group"
	docker_archive "$out" "$tag" "$tmp" '["/baton-controller"]' '"User":"65532:65532","ExposedPorts":{"8080/tcp":{}},'
	rm -rf "$tmp"
	log "wrote $out ($tag, $(du -h "$out" | cut -f1))"
	# The task image beside it (Debian's busybox-static, once the real
	# node's pieces are built).
	if [[ -x /bin/busybox && -x $(bin_of pause) && -x $(bin_of kubeprobe) ]]; then
		real_node_images
		cp "$RN/images/busybox-$KUBEPROBE_VERSION-2.tar" "$ROOT/target/image/busybox.tar"
		log "wrote $ROOT/target/image/busybox.tar ($BUSYBOX_IMAGE $SAMPLES_BUSYBOX_IMAGE)"
	fi
	if pid_of containerd >/dev/null; then
		ctr_ -n k8s.io images import --platform linux/amd64 "$out" >/dev/null || die "ctr images import $out failed; see $LOGS/ctr.log"
		log "imported $tag into the real node's containerd"
		import_images
	fi
	echo "$tag"
}
