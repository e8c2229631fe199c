"""An SMTP server on 127.0.1.3 that speaks TLS 1.0 only, for smtp-send's
legacy-tls test: STARTTLS with the certificate and key given, each message
appended to OUT with the TLS version it came over. Prints its port."""
import socket
import ssl
import sys
import warnings

warnings.simplefilter("ignore", DeprecationWarning)
cert, key, out = sys.argv[1:4]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.set_ciphers('DEFAULT:@SECLEVEL=0')
ctx.minimum_version = ssl.TLSVersion.TLSv1
ctx.maximum_version = ssl.TLSVersion.TLSv1
ctx.load_cert_chain(cert, key)
srv = socket.socket()
srv.bind(('127.0.1.3', 0))
srv.listen(5)
print(srv.getsockname()[1], flush=True)
def lines(sock):
    buf = b''
    while True:
        while b'\n' not in buf:
            d = sock.recv(4096)
            if not d:
                return
            buf += d
        line, buf = buf.split(b'\n', 1)
        yield line.rstrip(b'\r')
def session(conn):
    conn.sendall(b'220 legacy.test ESMTP\r\n')
    tls = False
    it = lines(conn)
    while True:
        line = next(it, None)
        if line is None:
            return conn
        cmd = line[:4].upper()
        if cmd in (b'EHLO', b'HELO'):
            offer = b'' if tls else b'250-STARTTLS\r\n'
            conn.sendall(b'250-legacy.test\r\n' + offer + b'250 8BITMIME\r\n')
        elif cmd == b'STAR' and not tls:
            conn.sendall(b'220 go ahead\r\n')
            conn = ctx.wrap_socket(conn, server_side=True)
            tls = True
            it = lines(conn)
        elif cmd in (b'MAIL', b'RCPT', b'RSET', b'NOOP'):
            conn.sendall(b'250 ok\r\n')
        elif cmd == b'DATA':
            conn.sendall(b'354 go\r\n')
            body = []
            for l in it:
                if l == b'.':
                    break
                body.append(l)
            version = conn.version().encode() if tls else b'plain'
            with open(out, 'ab') as f:
                f.write(b'version: ' + version + b'\n' + b'\n'.join(body) + b'\n')
            conn.sendall(b'250 queued\r\n')
        elif cmd == b'QUIT':
            conn.sendall(b'221 bye\r\n')
            return conn
        else:
            conn.sendall(b'500 what\r\n')


while True:
    conn, _ = srv.accept()
    try:
        session(conn)
    except Exception as e:
        print('session failed:', e, file=sys.stderr, flush=True)
    finally:
        try:
            conn.close()
        except Exception:
            pass
