#!/bin/sh
# Start redis-server with deploy/redis.conf and the ACL users of deploy/users.acl, adding each
# user's password at start so that no password is ever written in a committed file:
#   REDIS_<NAME>_PASSWORD (name upper-cased, "-" -> "_"), else /run/secrets/redis_<name>_password.
# A user with no password configured keeps none, and so cannot log in.
# Passwords are passed as redis-server arguments: use letters, digits, "-" and "_" only
# (e.g. `openssl rand -hex 32`).
# Extra arguments are passed on to redis-server after the config file (they override it).
set -eu
# The ACL rules hold patterns such as ~rq:*, which the shell must not expand.
set -f

here=$(dirname "$0")
conf=${REDIS_CONF:-$here/redis.conf}
acl=${REDIS_ACL:-$here/users.acl}

set -- "$conf" "$@"
while read -r kind name rules; do
    [ "$kind" = user ] || continue
    var="REDIS_$(printf '%s' "$name" | tr 'a-z-' 'A-Z_')_PASSWORD"
    password=$(printenv "$var" || true)
    secret="/run/secrets/redis_${name}_password"
    if [ -z "$password" ] && [ -r "$secret" ]; then
        password=$(cat "$secret")
    fi
    case "$password" in
        *[!A-Za-z0-9_-]*)
            echo "redis-start: the password of ACL user $name may only use letters, digits, - and _" >&2
            exit 2
            ;;
    esac
    if [ -n "$password" ]; then
        rules="$rules >$password"
    fi
    # One argument per rule: redis-server quotes each argument as a single config token.
    # shellcheck disable=SC2086
    set -- "$@" --user "$name" $rules
done <"$acl"

# In the official image, docker-entrypoint.sh fixes /data's owner and drops root.
if command -v docker-entrypoint.sh >/dev/null 2>&1; then
    exec docker-entrypoint.sh redis-server "$@"
fi
exec redis-server "$@"
