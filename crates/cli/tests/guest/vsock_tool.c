/*
 * vsock_tool: the guest side of the vsock end-to-end tests (crates/cli/tests/virtio.rs).
 * The test compiles it with riscv64-linux-gnu-gcc -static and hands it to the guest on a disk,
 * since the guest's busybox has no AF_VSOCK.
 *
 *   vsock_tool connect PORT   connect to the host (CID 2) port PORT, send stdin, then half-close;
 *                             everything the host sends back goes to stdout until it closes.
 *   vsock_tool listen PORT    listen on PORT (any CID), accept one connection and echo what it
 *                             sends until end of file; prints "accepted" on stderr.
 *
 * Exit status: 0 on success, 1 on any failure (with a message on stderr).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

static void die(const char *what)
{
	fprintf(stderr, "vsock_tool: %s: %s\n", what, strerror(errno));
	exit(1);
}

/* Writes all of buf; returns 0, or -1 on error. */
static int write_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Copies from one descriptor to another until end of file; returns bytes copied or -1. */
static long long copy(int from, int to)
{
	static char buf[65536];
	long long total = 0;
	for (;;) {
		ssize_t n = read(from, buf, sizeof buf);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (n == 0)
			return total;
		if (write_all(to, buf, (size_t)n) < 0)
			return -1;
		total += n;
	}
}

static int do_connect(unsigned port)
{
	int s = socket(AF_VSOCK, SOCK_STREAM, 0);
	if (s < 0)
		die("socket");
	struct sockaddr_vm addr;
	memset(&addr, 0, sizeof addr);
	addr.svm_family = AF_VSOCK;
	addr.svm_cid = VMADDR_CID_HOST;
	addr.svm_port = port;
	if (connect(s, (struct sockaddr *)&addr, sizeof addr) < 0)
		die("connect");
	/* The sender is a child so that a large echo can never deadlock against our own writes. */
	pid_t child = fork();
	if (child < 0)
		die("fork");
	if (child == 0) {
		if (copy(0, s) < 0)
			die("send");
		if (shutdown(s, SHUT_WR) < 0)
			die("shutdown");
		_exit(0);
	}
	long long got = copy(s, 1);
	if (got < 0)
		die("receive");
	int status;
	if (waitpid(child, &status, 0) < 0)
		die("waitpid");
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		fprintf(stderr, "vsock_tool: the sender failed\n");
		return 1;
	}
	close(s);
	return 0;
}

static int do_listen(unsigned port)
{
	int s = socket(AF_VSOCK, SOCK_STREAM, 0);
	if (s < 0)
		die("socket");
	struct sockaddr_vm addr;
	memset(&addr, 0, sizeof addr);
	addr.svm_family = AF_VSOCK;
	addr.svm_cid = VMADDR_CID_ANY;
	addr.svm_port = port;
	if (bind(s, (struct sockaddr *)&addr, sizeof addr) < 0)
		die("bind");
	if (listen(s, 1) < 0)
		die("listen");
	struct sockaddr_vm peer;
	socklen_t plen = sizeof peer;
	int c = accept(s, (struct sockaddr *)&peer, &plen);
	if (c < 0)
		die("accept");
	fprintf(stderr, "accepted from cid %u port %u\n", peer.svm_cid, peer.svm_port);
	long long n = copy(c, c);
	if (n < 0)
		die("echo");
	fprintf(stderr, "echoed %lld bytes\n", n);
	close(c);
	close(s);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: vsock_tool connect|listen PORT\n");
		return 1;
	}
	char *end;
	unsigned long port = strtoul(argv[2], &end, 10);
	if (*end != '\0' || port > 0xffffffffUL) {
		fprintf(stderr, "vsock_tool: bad port '%s'\n", argv[2]);
		return 1;
	}
	if (strcmp(argv[1], "connect") == 0)
		return do_connect((unsigned)port);
	if (strcmp(argv[1], "listen") == 0)
		return do_listen((unsigned)port);
	fprintf(stderr, "usage: vsock_tool connect|listen PORT\n");
	return 1;
}
