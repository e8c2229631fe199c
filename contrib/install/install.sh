#!/bin/sh
# Takes a fresh Debian (or any systemd) host to a running postroom, from a
# checkout: the steps of postroom-install(7), in order. Run as root:
#
#   cargo build --release
#   contrib/install/build-static  # smtp-recv, mail-inject, mailsort, vacation; optional
#   sudo contrib/install/install.sh example.org mail.example.org
#
# Safe to run again: it skips what is there (the user, the tree) and
# refreshes the binaries, man pages and units.
set -eu

domain=${1:?usage: install.sh DOMAIN [HOSTNAME]}
host=${2:-mail.$domain}
here=$(cd "$(dirname "$0")/../.." && pwd)
release=${CARGO_TARGET_DIR:-$here/target}/release
static=$here/target/static/x86_64-unknown-linux-musl/static
prefix=${PREFIX:-/usr/local}
tree=${TREE:-/var/lib/postroom}
config=/etc/postroom/postroom.toml

[ "$(id -u)" = 0 ] || { echo "install.sh: run as root" >&2; exit 1; }
for program in postroom mail-inject smtp-recv smtp-send pop3-serve imap-serve \
               vacation mailsort list-expand; do
    [ -x "$release/$program" ] || { echo "install.sh: $release/$program is missing: cargo build --release" >&2; exit 1; }
done

# 1. The system user that owns the tree.
getent passwd postroom >/dev/null ||
    adduser --system --group --home "$tree" \
        --gecos "postroom mail system" postroom

# 2. The programs: servers and admin tools in sbin, user tools in bin.
install -d "$prefix/sbin" "$prefix/bin"
# smtp-recv and the per-message programs from their static build when there
# is one (postroom-install(7), step 1, Build): they start in a fraction of
# the time.
built() {
    case $1 in
    smtp-recv | mail-inject | mailsort | vacation)
        if [ -x "$static/$1" ]; then echo "$static/$1"; return; fi
        echo "install.sh: $1 from the glibc build; contrib/install/build-static makes it start faster" >&2 ;;
    esac
    echo "$release/$1"
}
for program in postroom mail-inject smtp-recv smtp-send pop3-serve imap-serve; do
    install -m 0755 "$(built "$program")" "$prefix/sbin/"
done
for program in vacation mailsort list-expand; do
    install -m 0755 "$(built "$program")" "$prefix/bin/"
done

# 3. The manual pages.
for section in 1 5 7 8; do
    install -d "$prefix/share/man/man$section"
    for page in "$here"/man/*."$section"; do
        [ -e "$page" ] && install -m 0644 "$page" "$prefix/share/man/man$section/"
    done
done
command -v mandb >/dev/null && mandb -q || true

# 4. The tree: config in /etc/postroom, mail, queue and secrets in $tree,
#    owned by postroom; secrets 0640, mailboxes 0700 (postroom-tree(5)).
if [ ! -e "$config" ]; then
    "$prefix/sbin/postroom" --config "$config" init "$tree" \
        --domain "$domain" --hostname "$host"
    printf '\n# The tree'"'"'s owner: programs started as root become this user.\nrun_as = "postroom"\n' \
        | sed -i '/^hostname = /r /dev/stdin' "$config"
fi
chown -R postroom:postroom "$tree"
chmod 0750 "$tree"

# 5. The units: sockets per port (one process per connection), the queue
#    runner started by new mail and by a timer.
if [ -d /run/systemd/system ]; then
    install -m 0644 "$here"/contrib/systemd/* /etc/systemd/system/
    systemctl daemon-reload
    systemctl enable --now smtp.socket submission.socket submissions.socket \
        imaps.socket pop3s.socket smtp-send.path smtp-send.timer \
        postroom-tlsrpt.timer postroom-expire.timer
else
    echo "no systemd: see contrib/inetd/inetd.conf and contrib/cron/postroom"
fi

"$prefix/sbin/postroom" --config "$config" check || true
echo "next: postroom user add USER@$domain --password-stdin, postroom alias add postmaster@$domain USER,"
echo "      and the DNS records in postroom-install(7)."
