#!/bin/bash
# A throw-away SSSD (and optionally sshd) that serves one test, isolated from
# the host in a private mount namespace. Run it as root through
#
#     unshare --mount --propagation private bash tests/sssd/sandbox.sh WORKDIR PROBE_USER
#
# WORKDIR (prepared by the caller) must contain:
#   sssd.conf           the complete SSSD configuration
#   sssd.conf.d/*.conf  optional SSSD snippets (copied to /etc/sssd/conf.d)
#   nsswitch.conf       replaces /etc/nsswitch.conf
#   pam.d/              replaces /etc/pam.d (a full tree: host copy plus the files under test)
#   sshd_config         optional; when present a real sshd is started with it
#                       (the caller puts HostKey, Port and PidFile inside WORKDIR)
#   hostname            optional; the sandbox's hostname (needs a private UTS
#                       namespace: unshare --uts), set before sssd starts
#   hosts               optional; replaces /etc/hosts (e.g. to resolve that
#                       hostname to a fully qualified name)
#
# Inside the namespace the script bind-mounts private copies over
# /etc/nsswitch.conf, /etc/sssd, /etc/pam.d, /var/lib/sss, /var/log/sssd,
# /home and the login records in /var/log, and puts an overlay (private
# upper layer) over /run. Nothing it writes reaches the host's files: every
# mount uses `mount -n` and LIBMOUNT_UTAB points into WORKDIR.
#
# Protocol on stdout: one line "READY" once PROBE_USER resolves through SSSD
# (then the caller runs its commands with `nsenter -t PID -m`), or
# "FAILED: reason" on an error. The sandbox lives until stdin reaches EOF;
# then it stops sssd and sshd (by their process ids) and exits, and the
# kernel drops the namespace with all its mounts.
set -euo pipefail

W=${1:?usage: sandbox.sh WORKDIR PROBE_USER}
PROBE_USER=${2:?usage: sandbox.sh WORKDIR PROBE_USER}
W=$(cd "$W" && pwd)

fail() {
    echo "FAILED: $*"
    exit 1
}

# Never touch the host's mount table: refuse to run outside a private namespace.
if [ "$(readlink /proc/self/ns/mnt)" = "$(readlink /proc/1/ns/mnt)" ]; then
    fail "not in a private mount namespace (run through unshare --mount --propagation private)"
fi
[ "$(id -u)" = 0 ] || fail "must run as root"

export LIBMOUNT_UTAB="$W/utab"
m() { mount -n "$@"; }

SSSD_PID=""
SSHD_PID=""
cleanup() {
    for pid in $SSHD_PID $SSSD_PID; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in $SSHD_PID $SSSD_PID; do
        wait "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT

# --- the private trees -------------------------------------------------------
mkdir -p "$W/etc-sssd/conf.d" "$W/var-log-sssd" "$W/home" "$W/runfs" "$W/logrec"
install -m 0600 "$W/sssd.conf" "$W/etc-sssd/sssd.conf"
if [ -d "$W/sssd.conf.d" ]; then
    for f in "$W"/sssd.conf.d/*.conf; do
        if [ -e "$f" ]; then
            install -m 0600 "$f" "$W/etc-sssd/conf.d/"
        fi
    done
fi
chmod 0711 "$W/etc-sssd"
chmod 0750 "$W/var-log-sssd"
chmod 0755 "$W/home"

L="$W/var-lib-sss"
mkdir -p "$L"/{db,pipes/private,mc,pubconf/krb5.include.d,gpo_cache,secrets,keytabs,deskprofile}
chmod 0755 "$L" "$L/pipes" "$L/mc" "$L/pubconf" "$L/gpo_cache"
chmod 0700 "$L/db" "$L/pipes/private" "$L/secrets" "$L/keytabs"
chmod 0711 "$L/deskprofile"

# --- mounts ------------------------------------------------------------------
[ -d /etc/sssd ] || fail "/etc/sssd is missing (is the sssd package installed?)"
[ -d /var/lib/sss ] || fail "/var/lib/sss is missing (is the sssd package installed?)"
m --bind "$W/nsswitch.conf" /etc/nsswitch.conf
m --bind "$W/etc-sssd" /etc/sssd
m --bind "$W/pam.d" /etc/pam.d
m --bind "$L" /var/lib/sss
[ -d /var/log/sssd ] || fail "/var/log/sssd is missing (is the sssd package installed?)"
m --bind "$W/var-log-sssd" /var/log/sssd
m --bind "$W/home" /home
# The machine's name, as a container's: SSSD's host check and sudo read it.
if [ -f "$W/hostname" ]; then
    if [ "$(readlink /proc/self/ns/uts)" = "$(readlink /proc/1/ns/uts)" ]; then
        fail "a hostname needs a private UTS namespace (run through unshare --uts)"
    fi
    hostname "$(cat "$W/hostname")" || fail "cannot set the hostname"
fi
if [ -f "$W/hosts" ]; then
    m --bind "$W/hosts" /etc/hosts
fi
# Login records (sshd writes btmp on failed logins, pam/lastlog on sessions).
for f in btmp wtmp lastlog faillog; do
    if [ -f "/var/log/$f" ]; then
        : >"$W/logrec/$f"
        chown --reference="/var/log/$f" "$W/logrec/$f"
        chmod --reference="/var/log/$f" "$W/logrec/$f"
        m --bind "$W/logrec/$f" "/var/log/$f"
    fi
done

# /run: overlay with a private upper layer on a private tmpfs (an overlay
# upper layer must not itself live on overlayfs, as in many containers).
m -t tmpfs -o mode=0755 sandbox-run "$W/runfs"
mkdir -p "$W/runfs/upper" "$W/runfs/work"
if ! m -t overlay -o "lowerdir=/run,upperdir=$W/runfs/upper,workdir=$W/runfs/work" sandbox-run /run 2>"$W/overlay.err"; then
    # No overlayfs: a fresh, empty /run is enough for sssd and sshd.
    m -t tmpfs -o mode=0755 sandbox-run /run
    mkdir -p /run/lock
fi
# A host sssd's pid file would stop ours from starting (whiteout in the overlay).
rm -f /run/sssd.pid
# nscd would answer before nsswitch reaches sss.
if [ -d /run/nscd ]; then
    m -t tmpfs -o mode=0755 sandbox-nscd /run/nscd
fi
rm -rf /run/sshd
mkdir -m 0755 /run/sshd

# --- sssd --------------------------------------------------------------------
sssd -i --logger=files </dev/null >"$W/sssd.stdout" 2>&1 &
SSSD_PID=$!
echo "$SSSD_PID" >"$W/sssd.monitor.pid"

ready=""
for i in $(seq 1 300); do # 30 s
    if ! kill -0 "$SSSD_PID" 2>/dev/null; then
        fail "sssd exited early; see $W/sssd.stdout and $W/var-log-sssd"
    fi
    if [ -S /var/lib/sss/pipes/nss ] && [ -S /var/lib/sss/pipes/pam ] && getent passwd "$PROBE_USER" >/dev/null 2>&1; then
        ready=1
        break
    fi
    # Force the backend online at once if it went offline while starting.
    if [ $((i % 10)) = 0 ]; then
        kill -USR2 "$SSSD_PID" 2>/dev/null || true
    fi
    sleep 0.1
done
[ -n "$ready" ] || fail "user $PROBE_USER did not resolve through sssd within 30 s"

# --- sshd (optional) ---------------------------------------------------------
if [ -f "$W/sshd_config" ]; then
    /usr/sbin/sshd -t -f "$W/sshd_config" 2>"$W/sshd-check.err" || fail "sshd -t rejected the config: $(cat "$W/sshd-check.err")"
    /usr/sbin/sshd -D -f "$W/sshd_config" -E "$W/sshd.log" </dev/null >>"$W/sshd.log" 2>&1 &
    SSHD_PID=$!
    echo "$SSHD_PID" >"$W/sshd.main.pid"
fi

echo READY
# The caller stops reading after READY: nothing more may go to that pipe.
exec >>"$W/sandbox.err"
# Live until the caller closes stdin.
cat >/dev/null || true
