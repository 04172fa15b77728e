"""Tests for lmforge.data.pii: a labelled set (our own) scored per kind, validators, the step.

Positive spans are written ``⟦kind:value⟧`` inside their sentence; every other character is
negative. A prediction counts as correct when it has the gold kind and overlaps a gold span with
intersection-over-union >= 0.5. Card numbers and IBANs are generated with valid checksums from a
fixed seed; all names, numbers and keys are made up.
"""

from __future__ import annotations

import logging
import pickle
import random
import re
import string

import pytest

from lmforge.data.document import Document
from lmforge.data.pii import KINDS, PIIConfig, PIIScrubber, build, find, iban_ok, luhn_ok, scrub
from lmforge.errors import ConfigError

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# generated, checksum-valid values


def _luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    for check in string.digits:
        if luhn_ok(body + check):
            return body + check
    raise AssertionError("unreachable")


def _group(digits: str, sizes: list[int], sep: str) -> str:
    out, i = [], 0
    for size in sizes:
        out.append(digits[i : i + size])
        i += size
    return sep.join(out)


def _cards() -> list[str]:
    rng = random.Random(7)
    specs = [  # prefix, length, grouping
        ("4", 16, [4, 4, 4, 4]),
        ("4", 16, [16]),
        ("4", 13, [13]),
        ("51", 16, [4, 4, 4, 4]),
        ("55", 16, [16]),
        ("2221", 16, [4, 4, 4, 4]),
        ("2720", 16, [4, 4, 4, 4]),
        ("34", 15, [4, 6, 5]),
        ("37", 15, [15]),
        ("6011", 16, [4, 4, 4, 4]),
        ("65", 16, [4, 4, 4, 4]),
        ("3530", 16, [4, 4, 4, 4]),
        ("36", 14, [4, 6, 4]),
        ("62", 19, [19]),
        ("4", 19, [4, 4, 4, 4, 3]),
    ]
    out = []
    for prefix, length, sizes in specs:
        for sep in (" ", "-") if len(sizes) > 1 else ("",):
            out.append(_group(_luhn_complete(prefix, length, rng), sizes, sep))
    return out


def _iban(country: str, bban: str) -> str:
    moved = bban + country + "00"
    check = 98 - int("".join(str(int(c, 36)) for c in moved)) % 97
    return f"{country}{check:02d}{bban}"


def _ibans() -> list[str]:
    rng = random.Random(11)
    digits = lambda n: "".join(rng.choice(string.digits) for _ in range(n))  # noqa: E731
    raw = [
        _iban("DE", digits(18)),
        _iban("DE", digits(18)),
        _iban("GB", "NWBK" + digits(14)),
        _iban("GB", "BARC" + digits(14)),
        _iban("FR", digits(23)),
        _iban("NL", "ABNA" + digits(10)),
        _iban("ES", digits(20)),
        _iban("IT", "X" + digits(22)),
        _iban("CH", digits(17)),
        _iban("BE", digits(12)),
        _iban("AT", digits(16)),
        _iban("PL", digits(24)),
        _iban("NO", digits(11)),
        _iban("IE", "AIBK" + digits(14)),
        _iban("SE", digits(20)),
        _iban("DK", digits(14)),
        _iban("PT", digits(21)),
        _iban("FI", digits(14)),
    ]
    assert all(iban_ok(i) for i in raw)
    # half electronic form, half printed in groups of four
    return [i if k % 2 else " ".join(i[j : j + 4] for j in range(0, len(i), 4)) for k, i in enumerate(raw)]


# ---------------------------------------------------------------------------------------------
# the labelled set: positives (with surrounding context) and hard negatives

EMAILS = [
    "jane.doe@example.com",
    "j.smith+newsletter@mail.co.uk",
    "first_last@sub.domain.org",
    "ADMIN@EXAMPLE.NET",
    "user123@gmail.com",
    "support@my-company.io",
    "a.b.c@d-e.fr",
    "hr-team@corp.example.de",
    "noreply@notifications.github.com",
    "m.rossi@universita.it",
    "kim_lee99@naver.com",
    "sales@acme-widgets.biz",
    "o.obrien@tcd.ie",
    "test.user@localhost.localdomain",
    "x@y.travel",
    "ceo@startup.ai",
    "priya.sharma@iitb.ac.in",
    "dev+ci@build.example.dev",
    "mal@lemburg.com",
    "john.q.public@state.gov",
    "info@museum.museum",
    "alice1985@hotmail.co.jp",
    "bob.jones@company-name.com.au",
    "contact@xn--bcher-kva.example",
    "z.w@ab.cd",
    "Jane.Doe@Example.COM",
    "user@sub.sub2.example.co.uk",
    "first-last@exa-mple.org",
]
PHONES = [
    "+1 415 555 0134",
    "+1-415-555-0134",
    "+44 20 7946 0958",
    "+44 (0)20 7946 0958",
    "+49 30 12345678",
    "+33 1 23 45 67 89",
    "+81 3-1234-5678",
    "+61 2 9876 5432",
    "+91 98765 43210",
    "+353 1 234 5678",
    "+86 10 1234 5678",
    "+7 495 123-45-67",
    "+55 11 91234-5678",
    "+27 21 123 4567",
    "(415) 555-0134",
    "415-555-0134",
    "415.555.0134",
    "1-800-555-0199",
    "(212) 555 0187",
    "(646)555-0101",
    "020 7946 0958",
    "07700 900123",
    "01 23 45 67 89",
    "030 12345678",
    "0161 496 0000",
    "+31 20 123 4567",
    "+1 (415) 555-0134",
    "415 555 0134",
    "+44 7700 900123",
    "0049 30 12345678",
    "+4930123456789",
    "+1.415.555.0134",
    "+39 06 6982 1234",
]
IPS = [
    "81.2.69.142",
    "172.16.254.1",
    "10.0.0.12",
    "192.168.1.254",
    "34.117.59.81",
    "151.101.1.69",
    "203.0.114.7",
    "100.64.12.9",
    "52.95.110.1",
    "81.2.69.160",
    "45.33.32.156",
    "172.31.255.255",
    "91.198.174.192",
    "66.249.66.1",
    "10.10.10.10",
    "2606:4700:4700::1111",
    "2a00:1450:4009:80b::200e",
    "fe80::1ff:fe23:4567:890a",
    "2001:4860:4860::8888",
    "2600:1f18:24e6:b900:d4c9:2c1d:a6f2:7e2c",
    "2a03:2880:f10c:83:face:b00c:0:25de",
    "::ffff:81.2.69.160",
    "2001:470:1f0b::1",
    "84.17.52.3",
]
SECRETS = [
    "AKIAZ7Q2M4WXJ3R8PLNE",
    "ASIAY5T7K2B9D4H6QW3X",
    "ghp_8f3Kd92LmQ0zX1vB7nR4tY6uI2oP5aS9dF0g",
    "gho_Zt5Qm1Nb7Vc3Xk9Lp2Rw8Hy4Ju6Df0Gs1Ae3",
    "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4p3",
    "xoxb-2048517384-1093457782234-Kq8Zp3Lm9Vb2Nx7Rt5Wy1Hc4",
    "xoxp-9182736450-5647382910-1029384756-a1b2c3d4e5f60718293a4b5c6d7e8f90",
    "sk_live_51HxQ2kLmN8pR4tV6wY9zB3cD5fG7hJ",
    "rk_live_4fGh8JkL2mN6pQ9rS3tV7wX1yZ5aB0c",
    "sk_test_26PHem9AhJZvU623DfE1x4sd",
    "AIzaSyD3k9Xq7Lm2Nv8Bp4Rt6Wy1Zc5Hf0Jg3Ks",
    "AIzaSyB-1x2Y3z4A5b6C7d8E9f0G1h2I3j4K5l6",
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIn0."
    "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
    "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJhY21lIiwiZXhwIjoxNzAwMDAwMDAwfQ.Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MA",
]
ASSIGNED_SECRETS = [  # (prefix, secret value, suffix)
    ('api_key = "', "h3J9kL2mN8pQ4rS7tV1wX5yZ0aB6cD3e", '"'),
    ("API_KEY='", "7c9e6679f4a44b0a9d1e2f3a4b5c6d7e", "'"),
    ("token: ", "q8W3e5R7t9Y1u3I5o7P9a2S4d6F8g0H1", ""),
    ('"access_token": "', "ya29A0ARrdaM9x7Fq2Lz5Kp8Vn3Bt6Hw1Jc4Ye", '"'),
    ("client_secret=", "Gx7Pq2Lm9Zt4Vb8Nw3Rk6Hy1", ""),
    ("export AUTH_TOKEN=", "c3f1a9e7b5d2048f6a1c9e3b7d5f2a8c", ""),
    ("password: ", "Zq8mT4vX1pL7wN3k", ""),
    ("Authorization: Bearer ", "a8F3kL2qP9zX7mN4vB6tR1wY5hJ0cD3e", ""),
    ("refresh_token => '", "1//0gX7kP2qL9mZ4vN8tR3wB6hY1cF5jD", "'"),
    ("aws_secret_access_key = ", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzq2kD8pLmW", ""),
    ("DB_PASSWORD=", "s3cr3tP4ssw0rdV4lue", "!"),
    ("GITHUB_TOKEN: ", "a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a1f0", ""),
]
PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIIEowIBAAKCAQEAx7Lq2m9Vb3Nk8Rt5Wy1Hc4Zp2Qm7Lx9Vb3Nk8Rt5Wy1Hc4Zp\n"
    "2Qm7Lx9Vb3Nk8Rt5Wy1Hc4Zp2Qm7Lx9Vb3Nk8Rt5Wy1Hc4Zp2Qm7Lx9Vb3Nk8Rt5\n"
    "-----END RSA PRIVATE KEY-----"
)
PEM2 = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    "-----END OPENSSH PRIVATE KEY-----"
)
ADDRESSES = [
    "123 Main Street",
    "42 W 5th Ave, Apt 4B",
    "1600 Pennsylvania Avenue NW, Washington, DC 20500",
    "350 Fifth Avenue, New York, NY 10118",
    "221B Baker Street",
    "742 Evergreen Terrace",
    "1 Infinite Loop, Cupertino, CA 95014",
    "4059 Mt Lee Dr",
    "500 Oak Rd",
    "77 Massachusetts Ave",
    "2100 N Elm St Suite 300",
    "8 Market Square",
    "19 Sunset Blvd",
    "600 Montgomery Street, San Francisco, CA 94111",
    "31 Spooner Street",
    "12 Grimmauld Place",
    "1313 Mockingbird Lane",
    "90 Bedford St",
    "P.O. Box 1234",
    "PO Box 77",
    "455 Larkspur Dr, Baton Rouge, LA 70808",
    "3001 W Big Beaver Rd",
    "1 Main St.",
    "1234 Elm Street, Springfield, IL 62704",
    "55 E Monroe St #2400",
]

CONTEXTS = [
    "Please contact {} for more information.",
    "{}",
    "Reach me at {} tomorrow.",
    "Customer record: name=Jane Roe; value={}; status=active",
    "He wrote it down ({}) before leaving.",
    "Details:\n  {}\nThanks!",
    '{{"field": "{}", "verified": true}}',
    "Sent from {}.",
]

NEGATIVES = [
    # version numbers
    "Python 3.11.7 was released; upgrade from 3.10.13 soon.",
    "numpy==1.26.4 and torch>=2.4.0 are required.",
    "Windows version 10.0.19041.1 ships with it.",
    "Bump to v1.2.3.4 before the release.",
    "Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0.0.0 Safari/537.36",
    "The OID 1.3.6.1.4.1.311.21.7 names the template.",
    "Python 2.7.2.2 and 3.1.1.6 are valid version strings.",
    "Use the public resolvers 8.8.8.8 or 1.1.1.1 for DNS.",
    "Its reverse pointer is 4.3.2.1.in-addr.arpa and the hostmask 0.0.0.255.",
    "Signed values such as +35236450.6 and +000000120 appear in format specs.",
    "Release 2.0.0-rc.1+build.5 is out.",
    "glibc 2.35, gcc 12.2.0, kernel 6.5.0-14-generic",
    # dates and times
    "The meeting is on 2024-01-15 at 12:30:45 UTC.",
    "Born 15/01/1990, moved on 01.02.2024.",
    "From Jan 5, 2024 to Feb 29, 2024 (inclusive).",
    "Timestamp 1700000000 and 1699999999999 in milliseconds.",
    "2019-2020 season: 38 games, 2021-2022: 38 games.",
    "Opening hours 09:00-17:30, Monday to Friday.",
    "ISO week 2024-W03-2 and ordinal date 2024-015.",
    "The log line reads [2023-11-21 23:51:07,123] INFO started",
    # prices, quantities
    "It costs $1,299.99 or €1.049,00 depending on the store.",
    "Population: 1,234,567 (2020 census), area 12 345 km2.",
    "Revenue grew to 4 294 967 296 USD in the year.",
    "Order #100045 shipped 3 items weighing 12.5 kg.",
    "The fund returned 7.25% vs 6.90% last year.",
    "Pages 120-135 and 300-310 cover the topic.",
    "ZIP 94103 and ZIP+4 94103-1234 are both valid.",
    "Invoice 2024-000123 is due in 30 days.",
    # ISBNs, identifiers, hashes
    "ISBN 978-3-16-148410-0 and ISBN 0-306-40615-2.",
    "ISBN-13: 9780596520687, ISSN 2049-3630.",
    "commit 3f2a9c1d8e7b6a5f4e3d2c1b0a9f8e7d6c5b4a39",
    "sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "md5 d41d8cd98f00b204e9800998ecf8427e for the empty string",
    "UUID 123e4567-e89b-12d3-a456-426614174000 identifies the row.",
    "Request id: 550e8400-e29b-41d4-a716-446655440000",
    "DOI 10.1038/s41586-020-2649-2 describes NumPy.",
    "arXiv:2112.11446 is the Gopher paper; arXiv:1910.10683 is T5.",
    "Git short hashes like a1b2c3d and deadbeef are common.",
    "Docker image sha256:4bcff63911fcb4448bd4fdacec207030997caf25e9bea4045fa6c8c44de311d1",
    "Card ending in 4242 was charged.",
    "Account number 12345678, sort code 12-34-56.",
    "Tracking number 1Z999AA10123456784 is in transit.",
    "GB82 WEST 1234 5698 7654 33 is a bad example IBAN (wrong check digits).",
    "The serial is DE-2024-55555-XY.",
    "Product code AT12-3456-7890 in stock.",
    # math and numbers
    "3 + 4 = 7 and 2^32 = 4294967296.",
    "x = 1e+10; y = 6.02214076e+23",
    "The matrix product a @ b equals c.",
    "pi is 3.14159265358979 and e is 2.71828182845904.",
    "Solve 415 - 555 = -140 by hand.",
    "The sequence 1 1 2 3 5 8 13 21 34 55 89 grows fast.",
    "Fibonacci: 144, 233, 377, 610, 987, 1597, 2584, 4181.",
    "Test vectors: 0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 0.9",
    "Coordinates 37.421542, -122.085589 mark the spot.",
    "1234 5678 9012 3456 is not a card (no issuer prefix).",
    "4111 1111 1111 1112 fails the Luhn check.",
    "Reference 5555 5555 5555 4443 has a bad checksum.",
    "Scores were 450, 320 and 1234 this year.",
    "Range(0, 255) covers a byte; 65535 covers two.",
    "Large prime 2305843009213693951 is a Mersenne prime.",
    # ports, hosts, network-ish
    "Run the server on localhost:8080 or 0.0.0.0:8000.",
    "Postgres listens on port 5432; Redis on 6379.",
    "Connect to 127.0.0.1 or ::1 for loopback.",
    "The netmask 255.255.255.0 and broadcast 255.255.255.255.",
    "Documentation uses 192.0.2.1, 198.51.100.7 and 2001:db8::1.",
    "Multicast group 224.0.0.251 is mDNS.",
    "The MAC address 00:1A:2B:3C:4D:5E belongs to the NIC.",
    "Visit https://example.com:8443/path?q=1 for details.",
    "CIDR 10.0.0.0/8 is private space.",
    "The time is 12:30:45 and the ratio 16:9.",
    "Link-local 169.254.1.1 is assigned without DHCP.",
    # hex colours, CSS, markup
    "Use #ff8800 for the accent and #FFF for text.",
    "color: #1e90ff; background: #000000;",
    "The logo is at static/img/logo@2x.png and icon@3x.png.",
    # code and code-like text
    "@property\ndef name(self):\n    return self._name",
    "@functools.lru_cache(maxsize=128)\ndef fib(n): ...",
    "std::vector<int> v; std::map<std::string, int> m;",
    "x = a[::2] + b[1::3] + c[::-1]",
    "api_key = os.environ['API_KEY']",
    "token = None  # set later",
    "password = getpass.getpass()",
    "SECRET_KEY = 'change-me'",
    "token: <your-token-here>",
    "api_key='YOUR_API_KEY_HERE'",
    "ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx is a placeholder token",
    "token = tokenize.generate_tokens(readline)",
    "self.access_token = self._fetch_access_token_from_cache()",
    "password_hash = hashlib.sha256(password.encode()).hexdigest()",
    "AKIA is the prefix of AWS access key ids.",
    "-----BEGIN CERTIFICATE-----\nMIIB (public data)\n-----END CERTIFICATE-----",
    "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----",
    "pip install 'requests>=2.31' 'urllib3<3'",
    "git clone ssh://git.example.org/repo.git",
    "def connect(host='localhost', port=5432, timeout=30.0):",
    "socket.create_connection(('example.com', 443), timeout=10)",
    "if 0 <= octet <= 255 and len(parts) == 4:",
    "assert ipaddress.ip_address('192.0.2.1').version == 4",
    "re.compile(r'\\d{3}-\\d{3}-\\d{4}')",
    "for i in range(1000000): total += i * 31337 % 65521",
    "struct.pack('<IIQ', 4294967295, 12345678, 18446744073709551615)",
    "print(f'{x:08.3f} {y:+.2e}')",
    "random.seed(20240115); np.random.seed(1234567)",
    "while n != 1: n = n // 2 if n % 2 == 0 else 3 * n + 1",
    "HTTP/1.1 200 OK\nContent-Length: 1234\nContent-Type: text/html",
    "locale.setlocale(locale.LC_ALL, 'de_DE.UTF-8')",
    "os.chmod(path, 0o755); os.umask(0o022)",
    "return int.from_bytes(data[4:8], 'big') & 0xFFFFFFFF",
    "codecs.lookup('cp1252').decode(b'\\x80\\x81')",
    "timedelta(days=365, seconds=86399, microseconds=999999)",
    "The email module's parseaddr('Jane <at> example') returns ('', '').",
    "Write user@localhost to mean the local account.",
    "Tag @channel and @here in the Slack message.",
    "See PEP 3156 and RFC 2822 section 3.4.1.",
    "Error code 0x80070005 means access denied.",
    "Hex dump: 48 65 6c 6c 6f 20 57 6f 72 6c 64",
    "Unicode U+1F600 is GRINNING FACE; U+00E9 is é.",
    "Table 3.2.1 lists results; see section 4.1.2.3 for more.",
    "The IPv4 header has 20 bytes; IPv6 has 40.",
    "Use ::ffff:0:0/96 to map IPv4 into IPv6.",
    "Element-wise ops like a*b+c/d-e are vectorised.",
    # address-like text that is not an address
    "Chapter 3 Main Points are summarised below.",
    "In 2019 The Court ruled on the appeal.",
    "We adopted 2 Great Danes last year.",
    "The 3 Way handshake opens a TCP connection.",
    "Top 10 Python Tips for beginners.",
    "Windows 10 Pro and Office 365 Business.",
    "Route 66 is a highway in the US.",
    "Act 2 Scene 1 takes place in the Court.",
    "He scored 3 goals in the Champions League final.",
    "Section 230 of the Communications Decency Act.",
    "It took 12 Angry Men to reach a verdict.",
    "The street had 40 houses and 3 shops.",
    "Apollo 11 landed in 1969 on the Moon.",
    "Catch-22 is a novel; 1984 is another.",
    "Lane 3 of the pool is reserved.",
    # phone-like text that is not a phone
    "Call extension 4521 at the front desk.",
    "Part numbers 100-200-3000 and 100-200-3001.",
    "The range 1-100 and 200-300 are inclusive.",
    "Flight LH 454 departs at 07:45 from gate B12.",
    "Model no. 0800-XL in stock; 0 items left.",
    "Versions 0.12.4 and 0.13.0 are compatible.",
    "Sizes: 012 034 056 as catalogue codes.",
    "1 000 000 and 2 500 000 are round numbers.",
    "His record was 10.52 seconds in 100 m.",
    "Temperature ranged from -12.5 to +38.2 degrees.",
    "UTC+05:30 is India Standard Time; UTC-08:00 is PST.",
    "Ratio 1:1000000 scale map.",
    "Scientific 1.5e-10 and 6.626e-34 are small.",
    "+5 HP and -3 armour after the update.",
    "A SHA-1 of 40 hex chars: 2fd4e1c67a2d28fced849ee1bb76e7391b93eb12",
    "Line 1234: IndexError at offset 56789",
    "Dimensions 1920x1080, 2560x1440 and 3840x2160.",
    "The Dewey code 005.133 covers programming languages.",
    "Room 101 and 102 are on floor 1.",
    "Serial 3530-1113-3330-0000 in the old format was retired.",
]


def _parse(marked: str) -> tuple[str, list[tuple[int, int, str]]]:
    """Text without markers and its gold spans."""
    text, gold, pos = [], [], 0
    for m in re.finditer(r"⟦(\w+):(.*?)⟧", marked, flags=re.DOTALL):
        text.append(marked[pos : m.start()])
        start = sum(len(t) for t in text)
        text.append(m.group(2))
        gold.append((start, start + len(m.group(2)), m.group(1)))
        pos = m.end()
    text.append(marked[pos:])
    return "".join(text), gold


def labelled_set() -> list[str]:
    """Marked-up examples: every positive in a rotating context, then the hard negatives."""
    examples = []
    plain = (
        [("email", v) for v in EMAILS]
        + [("phone", v) for v in PHONES]
        + [("ip", v) for v in IPS]
        + [("credit_card", v) for v in _cards()]
        + [("iban", v) for v in _ibans()]
        + [("secret", v) for v in SECRETS]
        + [("address", v) for v in ADDRESSES]
    )
    for i, (kind, value) in enumerate(plain):
        context = CONTEXTS[i % len(CONTEXTS)]
        examples.append(context.replace("{}", f"⟦{kind}:{value}⟧").replace("{{", "{").replace("}}", "}"))
    for prefix, value, suffix in ASSIGNED_SECRETS:
        examples.append(f"{prefix}⟦secret:{value}⟧{suffix}")
    examples.append(f"key file:\n⟦secret:{PEM}⟧\nend of file")
    examples.append(f"⟦secret:{PEM2}⟧")
    examples.append("Mail ⟦email:ana@ejemplo.es⟧ or call ⟦phone:+34 912 345 678⟧ (office).")
    examples.append("Ship to ⟦address:55 Water Street⟧; server ⟦ip:52.14.64.100⟧ logs it.")
    examples.append(
        "Server at ⟦ip:192.168.0.1⟧:8080 and [⟦ip:2001:470:1f0b::2⟧]:443, IP=⟦ip:10.20.30.40⟧, ok"
    )
    examples.append("Test cards ⟦credit_card:4111-1111-1111-1111⟧ and ⟦credit_card:5500 0000 0000 0004⟧.")
    examples.append("IBAN: ⟦iban:DE44 5001 0517 5407 3249 31⟧ (example from the Bundesbank).")
    examples.append("Pay ⟦iban:" + _ibans()[0] + "⟧ with card ⟦credit_card:" + _cards()[0] + "⟧.")
    return examples + NEGATIVES


def _iou(a: tuple[int, int, str], b: tuple[int, int, str]) -> float:
    inter = max(0, min(a[1], b[1]) - max(a[0], b[0]))
    return inter / (max(a[1], b[1]) - min(a[0], b[0]))


def score() -> dict[str, dict[str, float]]:
    """Precision and recall per kind and overall on the labelled set; logs every miss."""
    tp: dict[str, int] = dict.fromkeys(KINDS, 0)
    pred_n: dict[str, int] = dict.fromkeys(KINDS, 0)
    gold_n: dict[str, int] = dict.fromkeys(KINDS, 0)
    for marked in labelled_set():
        text, gold = _parse(marked)
        pred = find(text)
        for g in gold:
            gold_n[g[2]] += 1
        for p in pred:
            pred_n[p[2]] += 1
            if any(p[2] == g[2] and _iou(p, g) >= 0.5 for g in gold):
                tp[p[2]] += 1
            else:
                log.warning("false positive %s %r in %r", p[2], text[p[0] : p[1]], text)
        for g in gold:
            if not any(p[2] == g[2] and _iou(p, g) >= 0.5 for p in pred):
                log.warning("missed %s %r in %r", g[2], text[g[0] : g[1]], text)
    out = {}
    for kind in (*KINDS, "overall"):
        t = sum(tp.values()) if kind == "overall" else tp[kind]
        p = sum(pred_n.values()) if kind == "overall" else pred_n[kind]
        g = sum(gold_n.values()) if kind == "overall" else gold_n[kind]
        out[kind] = {"precision": t / p if p else 1.0, "recall": t / g if g else 1.0, "gold": g, "pred": p}
    return out


def test_labelled_set_is_big_enough():
    examples = labelled_set()
    positives = sum(len(_parse(e)[1]) for e in examples)
    negatives = sum(1 for e in examples if not _parse(e)[1])
    assert positives >= 150 and negatives >= 150, (positives, negatives)


def test_precision_and_recall_per_kind():
    result = score()
    for kind, r in result.items():
        print(
            f"{kind:12s} precision {r['precision']:.3f} recall {r['recall']:.3f} (gold {r['gold']}, pred {r['pred']})"
        )
    assert result["overall"]["precision"] >= 0.95 and result["overall"]["recall"] >= 0.95, result["overall"]
    for kind in KINDS:
        assert result[kind]["precision"] >= 0.9, (kind, result[kind])
        assert result[kind]["recall"] >= 0.9, (kind, result[kind])


def test_validators():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert luhn_ok("79927398713") and not luhn_ok("79927398710")
    assert iban_ok("GB82WEST12345698765432") and iban_ok("DE89370400440532013000")
    assert not iban_ok("GB82WEST12345698765433")  # check digits wrong
    assert not iban_ok("DE8937040044053201300")  # one character short for Germany


def test_scrub_replaces_with_typed_placeholders_and_counts():
    text = "Mail jane@example.com, call +44 20 7946 0958, card 4111 1111 1111 1111, host 81.2.69.160."
    out, counts = scrub(text)
    assert out == "Mail <EMAIL>, call <PHONE>, card <CREDIT_CARD>, host <IP_ADDRESS>."
    assert counts == {"email": 1, "phone": 1, "credit_card": 1, "ip": 1}
    assert scrub(out)[0] == out  # placeholders are left alone
    only_email, counts = scrub(text, ["email"])
    assert only_email.startswith("Mail <EMAIL>, call +44") and counts == {"email": 1}
    assert scrub("DE89 3704 0044 0532 0130 00 IS my account")[0] == "<IBAN> IS my account"
    assert scrub('api_key = "h3J9kL2mN8pQ4rS7tV1wX5yZ0aB6cD3e"')[0] == 'api_key = "<SECRET>"'


def test_step_rewrites_text_counts_and_pickles():
    docs = [
        Document("a", "Contact bob@corp.example.org or 10.1.2.3 today.", {"source": "t"}),
        Document("b", "Nothing to see: version 3.11.7, port 8080.", {"source": "t"}),
    ]
    step = pickle.loads(pickle.dumps(build(PIIConfig())))
    out = list(step(docs, lambda d, r: pytest.fail("the scrubber drops nothing")))
    assert [d.text for d in out] == ["Contact <EMAIL> or <IP_ADDRESS> today.", docs[1].text]
    assert out[0].metadata == {"source": "t"} and out[1] is docs[1]
    counts = step.counts()
    assert counts["pii_email"] == 1 and counts["pii_ip"] == 1 and counts["pii_phone"] == 0
    assert counts["pii_docs"] == 1 and set(counts) == {f"pii_{k}" for k in KINDS} | {"pii_docs"}


def test_config():
    assert build(PIIConfig(enabled=False)) is None
    assert isinstance(build(PIIConfig(kinds=["email"])), PIIScrubber)
    with pytest.raises(ConfigError) as exc:
        PIIConfig(kinds=["email", "ssn"]).validate()
    assert exc.value.key == "kinds" and "ssn" in str(exc.value)


def test_python_docs_are_barely_touched():
    from lmforge.data.sources import iter_documents, resolve_sources

    docs = [d for s in resolve_sources(["builtin:python-docs"]) for d in iter_documents(s)]
    step = PIIScrubber(PIIConfig())
    out = list(step(docs, lambda d, r: None))
    counts = step.counts()
    print(counts)
    assert len(out) == len(docs)
    assert counts["pii_docs"] <= 0.1 * len(docs)  # mostly authors' e-mail addresses in module headers
    assert sum(v for k, v in counts.items() if k not in ("pii_docs", "pii_email")) <= 10, counts
