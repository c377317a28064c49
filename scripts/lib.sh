# Shared by scripts/test and scripts/demo.
# Root cannot run initdb: everything that starts a server runs as $EC_USER.
EC_USER=${EC_USER:-postgres}
export PATH="$(pg_config --bindir 2>/dev/null || echo /usr/lib/postgresql/15/bin):$PATH"

as_user() {
	if [ "$(id -u)" -eq 0 ]; then
		runuser -u "$EC_USER" -- env PATH="$PATH" "$@"
	else
		"$@"
	fi
}

build_and_install() {
	local src=$1
	make -C "$src" -s clean >/dev/null
	make -C "$src" -s >/dev/null
	if [ "$(id -u)" -eq 0 ]; then
		make -C "$src" -s install >/dev/null
	else
		sudo -n make -C "$src" -s install >/dev/null
	fi
}

# a copy of the tree that the unprivileged user can write into
user_copy() {
	local src=$1 dst
	dst=$(mktemp -d /tmp/entity_cache.XXXXXX)
	tar -C "$src" --exclude=.git -cf - . | tar -C "$dst" -xf -
	[ "$(id -u)" -eq 0 ] && chown -R "$EC_USER" "$dst"
	echo "$dst"
}
