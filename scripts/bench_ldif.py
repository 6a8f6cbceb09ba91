#!/usr/bin/env python3
"""Generates the benchmark directory for scripts/bench-ldap as OpenLDAP-style LDIF.

Usage: bench_ldif.py BASE_DN USERS GROUPS MEMBERS_PER_GROUP PASSWORD_HASH > data.ldif

Users uid=userNNNNN,ou=people,BASE (uidNumber 10001.., inetOrgPerson +
posixAccount), groups cn=grpNNNN,ou=groups,BASE (gidNumber 20001..,
posixGroup + groupOfNames with memberUid and member). Group g (0-based) has
the users g*MEMBERS+1 .. (g+1)*MEMBERS, wrapping around, so with 10,000 users,
500 groups and 20 members every user is in exactly one group. Every user gets
PASSWORD_HASH as userPassword (e.g. one {ARGON2} PHC string). Standard
library only.
"""

import sys


def main() -> int:
    if len(sys.argv) != 6:
        print(__doc__, file=sys.stderr)
        return 2
    base, users, groups, per_group, pw_hash = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    rdn_attr, rdn_value = base.split(",")[0].split("=", 1)
    out = []
    w = out.append
    if rdn_attr.lower() == "dc":
        w(f"dn: {base}\nobjectClass: top\nobjectClass: dcObject\nobjectClass: organization\ndc: {rdn_value}\no: {rdn_value}\n")
    else:
        w(f"dn: {base}\nobjectClass: top\nobjectClass: organization\no: {rdn_value}\n")
    for ou in ("people", "groups"):
        w(f"dn: ou={ou},{base}\nobjectClass: top\nobjectClass: organizationalUnit\nou: {ou}\n")

    def name(i: int) -> str:
        return f"user{i:05d}"

    for i in range(1, users + 1):
        n = name(i)
        gid = 20001 + ((i - 1) // per_group) % max(groups, 1)
        w(
            f"dn: uid={n},ou=people,{base}\n"
            "objectClass: top\nobjectClass: person\nobjectClass: organizationalPerson\n"
            "objectClass: inetOrgPerson\nobjectClass: posixAccount\n"
            f"uid: {n}\ncn: Bench {n}\nsn: {n}\ngivenName: Bench\n"
            f"mail: {n}@example.org\nuidNumber: {10000 + i}\ngidNumber: {gid}\n"
            f"homeDirectory: /home/{n}\nloginShell: /bin/bash\ngecos: Bench {n}\n"
            f"userPassword: {pw_hash}\n"
        )
    for g in range(groups):
        cn = f"grp{g + 1:04d}"
        members = [name((g * per_group + k) % users + 1) for k in range(per_group)] if users else []
        lines = [
            f"dn: cn={cn},ou=groups,{base}",
            "objectClass: top",
            "objectClass: posixGroup",
            "objectClass: groupOfNames",
            f"cn: {cn}",
            f"gidNumber: {20001 + g}",
            f"description: Bench group {cn}",
        ]
        lines += [f"memberUid: {m}" for m in members]
        lines += [f"member: uid={m},ou=people,{base}" for m in members]
        w("\n".join(lines) + "\n")
    sys.stdout.write("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
