/*
 * mesh-cni shim: the binary the container runtime executes as the CNI plugin.
 *
 * It forwards the request -- the CNI_* environment and stdin, both bounded -- to the mesh-cni agent over a
 * UNIX socket and relays the answer (stdout, stderr, exit code). When the agent's socket is absent or
 * refuses, or the agent goes away before answering, it runs the same TypeScript handler standalone:
 * `node <engine>` with the same stdin, in an environment of only CNI_*, MESH_CNI_* and a sanitized PATH
 * (engine_environment). It never parses the netconf or any pod data; the frame format is in src/agent/shim-socket.ts.
 *
 * Socket: $MESH_CNI_AGENT_SOCKET, else /var/run/mesh-cni/agent.sock.
 * Engine: MESH_CNI_ENGINE_PATH fixed at build time, else <dir of this binary>/mesh-cni.d/mesh-cni.js (the
 *         self-contained engine the installer puts there), else <dir of this binary>/../dist/src/standalone/main.js
 *         (the build tree). A bare <dir>/mesh-cni.js is not looked for: older installs put one there, and the
 *         installer deletes it.
 * Node:   the runtime shipped beside the engine, <engine dir>/runtime/ (node and the libraries it links, from
 *         scripts/build-engine.js), started through its own loader so nothing of the host's libc is used:
 *         runtime/ld.so --library-path runtime/lib runtime/node <engine>. Only where no runtime is shipped (the
 *         build tree): MESH_CNI_NODE_PATH fixed at build time, else `node` on PATH.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#ifndef MESH_CNI_ENGINE_PATH
#define MESH_CNI_ENGINE_PATH ""
#endif
#ifndef MESH_CNI_NODE_PATH
#define MESH_CNI_NODE_PATH ""
#endif

#define DEFAULT_SOCKET "/var/run/mesh-cni/agent.sock"
#define MAX_STDIN (1024 * 1024)
/* One byte past the limit is forwarded so the handler reports oversized stdin with its documented code. */
#define STDIN_CAP (MAX_STDIN + 1)
#define MAX_ENV_ENTRIES 64
#define MAX_ENV_BYTES (64 * 1024)
#define MAX_RESPONSE_BODY (4 * 1024 * 1024)
#define DEFAULT_TIMEOUT_MS 60000
#define CNI_TRY_AGAIN_LATER 11
#define CNI_IO_FAILURE 5
#define CNI_INVALID_ENVIRONMENT 4

extern char **environ;

static void put_u32(unsigned char *p, uint32_t v) {
  p[0] = (unsigned char)(v >> 24);
  p[1] = (unsigned char)(v >> 16);
  p[2] = (unsigned char)(v >> 8);
  p[3] = (unsigned char)v;
}

static uint32_t get_u32(const unsigned char *p) {
  return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static void write_all_fd(int fd, const char *buf, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, buf, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      return;
    }
    buf += n;
    len -= (size_t)n;
  }
}

/* Appends s to out as JSON string content; messages here are ours, but errno text and paths are not. */
static size_t json_escape(char *out, size_t cap, size_t pos, const char *s) {
  for (; *s && pos + 7 < cap; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') {
      out[pos++] = '\\';
      out[pos++] = (char)c;
    } else if (c < 0x20) {
      pos += (size_t)snprintf(out + pos, cap - pos, "\\u%04x", c);
    } else {
      out[pos++] = (char)c;
    }
  }
  return pos;
}

/* Prints a CNI error result. The shim does not read the netconf, so it answers in the newest version. */
static int fail(int code, const char *msg, const char *detail) {
  char out[2048];
  size_t pos = (size_t)snprintf(out, sizeof out, "{\"cniVersion\":\"1.1.0\",\"code\":%d,\"msg\":\"", code);
  pos = json_escape(out, sizeof out - 64, pos, msg);
  if (detail && *detail) {
    pos += (size_t)snprintf(out + pos, sizeof out - pos, "\",\"details\":\"");
    pos = json_escape(out, sizeof out - 8, pos, detail);
  }
  pos += (size_t)snprintf(out + pos, sizeof out - pos, "\"}");
  write_all_fd(STDOUT_FILENO, out, pos);
  return 1;
}

static long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static int timeout_ms(void) {
  const char *v = getenv("MESH_CNI_SHIM_TIMEOUT_MS");
  if (v && *v) {
    char *end = NULL;
    long n = strtol(v, &end, 10);
    if (end && *end == '\0' && n > 0 && n <= 600000) return (int)n;
  }
  return DEFAULT_TIMEOUT_MS;
}

static size_t read_stdin(unsigned char *buf, size_t cap) {
  size_t len = 0;
  while (len < cap) {
    ssize_t n = read(STDIN_FILENO, buf + len, cap - len);
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (n == 0) break;
    len += (size_t)n;
  }
  return len;
}

/*
 * Whether the CNI_* environment fits the frame's bounds (the agent's are the same, and the standalone engine
 * applies them too). Nothing is ever left out: a variable dropped to fit would change the request's meaning
 * (CNI_ARGS gone makes a meshed pod look like no Kubernetes pod at all).
 */
static int env_fits(size_t *count_out, size_t *bytes_out) {
  size_t env_bytes = 0, count = 0;
  for (char **e = environ; *e; e++) {
    if (strncmp(*e, "CNI_", 4) != 0) continue;
    env_bytes += strlen(*e);
    count++;
  }
  *count_out = count;
  *bytes_out = env_bytes;
  return count <= MAX_ENV_ENTRIES && env_bytes <= MAX_ENV_BYTES;
}

/* Builds the request frame: "MCQ1" u32 bodyLen | u32 envCount {u32 len, "NAME=VALUE"}* u32 stdinLen stdin */
static unsigned char *build_frame(const unsigned char *in, size_t in_len, size_t *frame_len) {
  size_t count = 0, env_bytes = 0;
  if (!env_fits(&count, &env_bytes)) return NULL;
  size_t body = 4 + count * 4 + env_bytes + 4 + in_len;
  unsigned char *frame = malloc(8 + body);
  if (!frame) return NULL;
  memcpy(frame, "MCQ1", 4);
  put_u32(frame + 4, (uint32_t)body);
  put_u32(frame + 8, (uint32_t)count);
  unsigned char *p = frame + 12;
  for (char **e = environ; *e; e++) {
    if (strncmp(*e, "CNI_", 4) != 0) continue;
    size_t l = strlen(*e);
    put_u32(p, (uint32_t)l);
    memcpy(p + 4, *e, l);
    p += 4 + l;
  }
  put_u32(p, (uint32_t)in_len);
  if (in_len) memcpy(p + 4, in, in_len);
  *frame_len = 8 + body;
  return frame;
}

/* Waits for fd to be ready; 0 on ready, -1 on timeout or error. */
static int wait_fd(int fd, short events, long deadline) {
  for (;;) {
    long left = deadline - now_ms();
    if (left <= 0) return -1;
    struct pollfd p = {.fd = fd, .events = events, .revents = 0};
    int r = poll(&p, 1, (int)left);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    return 0;
  }
}

/* 0 done, -1 timeout, -2 connection error */
static int send_all(int fd, const unsigned char *buf, size_t len, long deadline) {
  while (len > 0) {
    if (wait_fd(fd, POLLOUT, deadline) < 0) return now_ms() >= deadline ? -1 : -2;
    ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return -2;
    }
    buf += n;
    len -= (size_t)n;
  }
  return 0;
}

static int recv_all(int fd, unsigned char *buf, size_t len, long deadline) {
  while (len > 0) {
    if (wait_fd(fd, POLLIN, deadline) < 0) return now_ms() >= deadline ? -1 : -2;
    ssize_t n = recv(fd, buf, len, 0);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return -2;
    }
    if (n == 0) return -2;
    buf += n;
    len -= (size_t)n;
  }
  return 0;
}

#define AGENT_ABSENT (-1)
#define AGENT_TIMEOUT (-2)
#define AGENT_NOT_ROOT (-3)

/*
 * Connects to the agent within the request's one deadline. The socket is non-blocking from the start: a
 * stopped agent whose backlog is full makes a blocking connect() wait forever, and a UNIX socket answers
 * EAGAIN there instead, which is retried until the deadline. Returns the fd, AGENT_ABSENT when nothing
 * listens (the caller runs standalone), AGENT_TIMEOUT, or AGENT_NOT_ROOT when the listener is not root.
 */
static int connect_agent(const char *path, long deadline) {
  struct sockaddr_un addr;
  if (strlen(path) >= sizeof addr.sun_path) return AGENT_ABSENT;
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return AGENT_ABSENT;
  memset(&addr, 0, sizeof addr);
  addr.sun_family = AF_UNIX;
  strcpy(addr.sun_path, path);
  for (;;) {
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0) break;
    if (errno == EINTR) continue;
    if (errno == EISCONN) break;
    if (errno == EAGAIN || errno == EINPROGRESS) {
      long left = deadline - now_ms();
      if (left <= 0) {
        close(fd);
        return AGENT_TIMEOUT;
      }
      /* A full backlog does not signal when it drains; look again shortly. */
      struct timespec pause = {.tv_sec = 0, .tv_nsec = (left < 20 ? left : 20) * 1000000L};
      nanosleep(&pause, NULL);
      continue;
    }
    close(fd);
    return AGENT_ABSENT;
  }
  /* Only root may answer for the agent: a socket put there by anyone else is not ours to trust. */
  struct ucred cred;
  socklen_t len = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || cred.uid != 0) {
    close(fd);
    return AGENT_NOT_ROOT;
  }
  return fd;
}

/*
 * The agent went away in the middle of a request (killed, restarted). Every mesh-cni command is idempotent
 * -- ADD replaces whatever an interrupted ADD left, DEL and CHECK only read or remove -- so the request is
 * run again standalone: the pod ends fully programmed or with an error and none of our rules, never half.
 */
#define AGENT_CONNECTION_BROKE (-1000)

static int relay_via_agent(int fd, const unsigned char *in, size_t in_len, int ms, long deadline) {
  char detail[128];
  snprintf(detail, sizeof detail, "timeout %d ms", ms);
  size_t frame_len = 0;
  unsigned char *frame = build_frame(in, in_len, &frame_len);
  if (!frame) return fail(CNI_IO_FAILURE, "mesh-cni shim: out of memory", "");
  int r = send_all(fd, frame, frame_len, deadline);
  free(frame);
  if (r == -1) return fail(CNI_TRY_AGAIN_LATER, "mesh-cni agent did not answer in time", detail);
  if (r == -2) return AGENT_CONNECTION_BROKE;

  unsigned char header[8];
  r = recv_all(fd, header, sizeof header, deadline);
  if (r == -1) return fail(CNI_TRY_AGAIN_LATER, "mesh-cni agent did not answer in time", detail);
  if (r == -2) return AGENT_CONNECTION_BROKE;
  uint32_t body_len = get_u32(header + 4);
  if (memcmp(header, "MCR1", 4) != 0 || body_len < 12 || body_len > MAX_RESPONSE_BODY) {
    return fail(CNI_TRY_AGAIN_LATER, "mesh-cni agent sent a malformed answer", "");
  }
  unsigned char *body = malloc(body_len);
  if (!body) return fail(CNI_IO_FAILURE, "mesh-cni shim: out of memory", "");
  r = recv_all(fd, body, body_len, deadline);
  if (r != 0) {
    free(body);
    return r == -1 ? fail(CNI_TRY_AGAIN_LATER, "mesh-cni agent did not answer in time", detail) : AGENT_CONNECTION_BROKE;
  }
  uint32_t exit_code = get_u32(body);
  uint32_t out_len = get_u32(body + 4);
  if (out_len > body_len - 12) {
    free(body);
    return fail(CNI_TRY_AGAIN_LATER, "mesh-cni agent sent a malformed answer", "");
  }
  uint32_t err_len = get_u32(body + 8 + out_len);
  if ((size_t)out_len + err_len + 12 != body_len) {
    free(body);
    return fail(CNI_TRY_AGAIN_LATER, "mesh-cni agent sent a malformed answer", "");
  }
  write_all_fd(STDERR_FILENO, (const char *)body + 12 + out_len, err_len);
  write_all_fd(STDOUT_FILENO, (const char *)body + 8, out_len);
  free(body);
  return (int)(exit_code & 0xff);
}

static int readable(const char *path) { return path[0] != '\0' && access(path, R_OK) == 0; }

static int find_engine(char *out, size_t size) {
  if (readable(MESH_CNI_ENGINE_PATH)) {
    snprintf(out, size, "%s", MESH_CNI_ENGINE_PATH);
    return 0;
  }
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0) return -1;
  exe[n] = '\0';
  char *slash = strrchr(exe, '/');
  if (!slash) return -1;
  *slash = '\0';
  static const char *const relative[] = {"/mesh-cni.d/mesh-cni.js", "/../dist/src/standalone/main.js"};
  for (size_t i = 0; i < sizeof relative / sizeof relative[0]; i++) {
    int w = snprintf(out, size, "%s%s", exe, relative[i]);
    if (w > 0 && (size_t)w < size && readable(out)) return 0;
  }
  return -1;
}

#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

/*
 * The runtime's PATH with only absolute directories: an empty or relative entry ("", ".", "bin") searches the
 * directory the runtime happened to start us in, so a program there could stand in for iptables-restore.
 * Kept, not fixed: where iptables, nft and ip live is the node's to say, and the runtime's PATH is its answer.
 */
static char *sanitized_path(const char *path) {
  size_t len = path ? strlen(path) : 0;
  char *out = malloc(sizeof "PATH=" + len + sizeof DEFAULT_PATH);
  if (!out) return NULL;
  char *p = stpcpy(out, "PATH=");
  const char *start = path;
  while (start && *start) {
    const char *end = strchr(start, ':');
    size_t n = end ? (size_t)(end - start) : strlen(start);
    if (n > 0 && start[0] == '/') {
      if (p != out + 5) *p++ = ':';
      memcpy(p, start, n);
      p += n;
    }
    start = end ? end + 1 : NULL;
  }
  if (p == out + 5) p = stpcpy(p, DEFAULT_PATH);
  *p = '\0';
  return out;
}

/*
 * The engine's environment, built from nothing: the request's CNI_* variables, our own MESH_CNI_* settings
 * and PATH (sanitized, above). Everything else the runtime carries is meant for other programs and must not
 * reach the engine: NODE_OPTIONS (`--require` would run a file inside it; one naming a missing file kills it
 * before it can answer), LD_PRELOAD and LD_LIBRARY_PATH (the loader would map them into the shipped runtime),
 * NODE_PATH, NODE_EXTRA_CA_CERTS, OPENSSL_CONF and the rest. NULL when out of memory.
 */
static char **engine_environment(void) {
  size_t count = 0;
  for (char **e = environ; *e; e++) count++;
  char **env = calloc(count + 2, sizeof *env);
  char *path = sanitized_path(getenv("PATH"));
  if (!env || !path) {
    free(env);
    free(path);
    return NULL;
  }
  size_t n = 0;
  env[n++] = path;
  for (char **e = environ; *e; e++) {
    if (strncmp(*e, "CNI_", 4) == 0 || strncmp(*e, "MESH_CNI_", 9) == 0) env[n++] = *e;
  }
  env[n] = NULL;
  return env;
}

/* Hands stdin to the child through an in-memory file, then replaces this process with node. */
static int run_standalone(const unsigned char *in, size_t in_len) {
  char engine[PATH_MAX];
  if (find_engine(engine, sizeof engine) < 0) {
    return fail(CNI_TRY_AGAIN_LATER, "mesh-cni agent is not running and the standalone engine was not found", MESH_CNI_ENGINE_PATH);
  }
  int fd = memfd_create("mesh-cni-stdin", MFD_CLOEXEC);
  if (fd < 0) return fail(CNI_IO_FAILURE, "mesh-cni shim: memfd_create failed", strerror(errno));
  write_all_fd(fd, (const char *)in, in_len);
  if (lseek(fd, 0, SEEK_SET) < 0 || dup2(fd, STDIN_FILENO) < 0) {
    return fail(CNI_IO_FAILURE, "mesh-cni shim: cannot pass stdin to the engine", strerror(errno));
  }
  /* The engine's directory: every path below is it plus a short suffix, so PATH_MAX + 32 always fits. */
  char dir[PATH_MAX], loader[PATH_MAX + 32], libs[PATH_MAX + 32], node[PATH_MAX + 32];
  snprintf(dir, sizeof dir, "%s", engine);
  char *slash = strrchr(dir, '/');
  if (slash) *slash = '\0';
  char **env = engine_environment();
  if (!env) return fail(CNI_IO_FAILURE, "mesh-cni shim: out of memory", "");
  /* From here on, environ is the engine's: execv passes it, and execvp searches its PATH. */
  environ = env;
  snprintf(loader, sizeof loader, "%s/runtime/ld.so", dir);
  if (access(loader, X_OK) == 0) {
    snprintf(libs, sizeof libs, "%s/runtime/lib", dir);
    snprintf(node, sizeof node, "%s/runtime/node", dir);
    char *shipped[] = {loader, "--library-path", libs, node, engine, NULL};
    execv(loader, shipped);
    return fail(CNI_TRY_AGAIN_LATER, "mesh-cni agent is not running and the shipped runtime could not be executed", strerror(errno));
  }
  char *argv[] = {"node", engine, NULL};
  if (MESH_CNI_NODE_PATH[0] != '\0' && access(MESH_CNI_NODE_PATH, X_OK) == 0) execv(MESH_CNI_NODE_PATH, argv);
  execvp("node", argv);
  return fail(CNI_TRY_AGAIN_LATER, "mesh-cni agent is not running and node could not be executed", strerror(errno));
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  unsigned char *in = malloc(STDIN_CAP);
  if (!in) return fail(CNI_IO_FAILURE, "mesh-cni shim: out of memory", "");
  size_t in_len = read_stdin(in, STDIN_CAP);
  /* One deadline for the whole exchange with the agent: connect, write and read. */
  int ms = timeout_ms();
  long deadline = now_ms() + ms;

  size_t env_count = 0, env_bytes = 0;
  if (!env_fits(&env_count, &env_bytes)) {
    /* The same answer with or without the agent: a request is never shortened to fit. */
    char detail[160];
    snprintf(detail, sizeof detail, "%zu CNI_* variables of %zu bytes; at most %d variables and %d bytes are accepted", env_count, env_bytes,
             MAX_ENV_ENTRIES, MAX_ENV_BYTES);
    return fail(CNI_INVALID_ENVIRONMENT, "the CNI_* environment is larger than mesh-cni accepts", detail);
  }

  const char *path = getenv("MESH_CNI_AGENT_SOCKET");
  if (!path || !*path) path = DEFAULT_SOCKET;
  int fd = connect_agent(path, deadline);
  if (fd == AGENT_ABSENT) return run_standalone(in, in_len);
  if (fd == AGENT_TIMEOUT) {
    char detail[128];
    snprintf(detail, sizeof detail, "could not connect to %s within %d ms", path, ms);
    return fail(CNI_TRY_AGAIN_LATER, "mesh-cni agent did not answer in time", detail);
  }
  if (fd == AGENT_NOT_ROOT) {
    /* Never hand the request to an impostor, nor believe its answer: program the pod ourselves. */
    static const char warn[] = "mesh-cni shim: the agent socket is not served by root; running standalone\n";
    write_all_fd(STDERR_FILENO, warn, sizeof warn - 1);
    return run_standalone(in, in_len);
  }
  int code = relay_via_agent(fd, in, in_len, ms, deadline);
  close(fd);
  if (code == AGENT_CONNECTION_BROKE) return run_standalone(in, in_len);
  free(in);
  return code;
}
