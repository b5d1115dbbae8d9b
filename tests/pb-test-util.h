/* Helpers shared by the tests: free ports, spawned servers, raw loopback sockets. */
#pragma once

#include <gio/gio.h>

#include "pb-device.h"

/* PB_TEST_ASAN: built with AddressSanitizer (gcc says so with __SANITIZE_ADDRESS__, clang
 * through __has_feature). The server under test is built the same way. */
#if defined(__SANITIZE_ADDRESS__)
#define PB_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PB_TEST_ASAN 1
#endif
#endif

G_BEGIN_DECLS

/* Path of a built program under the build tree (PB_PLUGBOARD_BIN for "plugboard"). */
const char *pb_test_plugboard_path (void);
/* A scratch folder removed by pb_test_scratch_cleanup(); unique per process. */
char *pb_test_make_scratch_dir (void);
void pb_test_remove_tree (const char *path);

/* ---- a `plugboard serve` child process (loopback and hostile tests) ---- */

typedef struct _PbTestServer PbTestServer;

/* Spawns `plugboard serve --listen 127.0.0.1 --port 0 ARGS...` with its standard output piped,
 * and reads it until "listening on ... port N" and one "exporting BUSID: ..." line per device
 * (one per --virtual argument, three without any). Fails the test if that does not come within
 * 10 s. The child gets SIGKILL if the test process dies. */
PbTestServer *pb_test_server_start (const char *first_arg, ...) G_GNUC_NULL_TERMINATED;
PbTestServer *pb_test_server_startv (const char *const *args);
/* Writes to the server's standard input: only for a server started with --type-stdin. */
void pb_test_server_write_stdin (PbTestServer *server, const char *text);
guint16 pb_test_server_get_port (PbTestServer *server);
GPid pb_test_server_get_pid (PbTestServer *server);
guint pb_test_server_get_n_devices (PbTestServer *server);
/* Bus ID and description of the index-th "exporting" line. */
const char *pb_test_server_get_busid (PbTestServer *server, guint index);
const char *pb_test_server_get_description (PbTestServer *server, guint index);
/* The first "pty /dev/pts/N" path of the exporting lines, or NULL. */
const char *pb_test_server_get_pty_path (PbTestServer *server);
/* Lines the server printed so far that start with prefix (use a trailing space after a bus ID:
 * "close 100-1 " does not match "close 100-10"). */
guint pb_test_server_count_lines (PbTestServer *server, const char *prefix);
/* Waits until at least count such lines were printed; FALSE after timeout_ms. */
gboolean pb_test_server_wait_lines (PbTestServer *server, const char *prefix, guint count, guint timeout_ms);
/* Every line so far, joined with newlines (for messages). */
char *pb_test_server_dup_output (PbTestServer *server);
gboolean pb_test_server_is_running (PbTestServer *server);
/* Resident memory of the server in KiB (VmRSS from /proc/PID/status). */
guint64 pb_test_server_get_rss_kib (PbTestServer *server);
/* SIGTERM, then waits up to 10 s for the exit (SIGKILL after that). TRUE when the server exited
 * by itself with status 0. The server stays valid (for its lines) until freed. */
gboolean pb_test_server_stop (PbTestServer *server);
/* Stops it if still running, and frees. */
void pb_test_server_free (PbTestServer *server);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (PbTestServer, pb_test_server_free)

/* ---- raw TCP clients on 127.0.0.1 (blocking fds, every wait bounded) ---- */

/* Connected socket or a test failure. TCP_NODELAY. */
int pb_test_raw_connect (guint16 port);
/* Sends everything (MSG_NOSIGNAL). FALSE when the peer closed or reset the connection, or after
 * timeout_ms without progress. */
gboolean pb_test_raw_send (int fd, const void *data, gsize len, guint timeout_ms);
/* Reads exactly len bytes. Returns len, fewer at end of stream (or reset), -1 on timeout. */
gssize pb_test_raw_recv (int fd, void *buf, gsize len, guint timeout_ms);
/* Reads and discards until end of stream or reset: TRUE; FALSE when the peer still kept the
 * connection open after timeout_ms. *n_discarded (optional) gets the bytes read meanwhile. */
gboolean pb_test_raw_wait_closed (int fd, guint timeout_ms, gsize *n_discarded);
/* OP_REQ_IMPORT of busid on a new connection. Returns the fd in the URB phase, or -1 with
 * *status_out (optional) the reply's status (-1 when the server closed without a reply). */
int pb_test_raw_import (guint16 port, const char *busid, gint *status_out);

/* ---- descriptors ---- */

/* Address (direction bit included) of the first endpoint of the given transfer type (1 iso,
 * 2 bulk, 3 interrupt) and direction in the first interface of class interface_class in a
 * configuration descriptor; 0 when there is none. */
guint8 pb_test_find_endpoint (const guint8 *config, gsize len, guint8 interface_class, guint8 transfer_type,
                              gboolean in);
/* Number of that interface (bInterfaceNumber), or -1. */
gint pb_test_find_interface (const guint8 *config, gsize len, guint8 interface_class);

G_END_DECLS

G_BEGIN_DECLS

/* ---- driving a PbDevice directly, as a PbExportSession would ---- */

typedef struct {
  PbDevice *device;
  GQueue completed;   /* PbUrb *, in completion order */
  guint32 next_seqnum;
} PbTestDriver;

void pb_test_driver_init (PbTestDriver *driver, PbDevice *device);
/* A URB for ep/direction with a zeroed buffer of length bytes, completing into driver. */
PbUrb *pb_test_driver_urb_new (PbTestDriver *driver, guint ep, PbUsbipDirection direction, guint32 length);
void pb_test_urb_free (PbUrb *urb);
/* Asserts that expected is the next completed URB, and returns it. */
PbUrb *pb_test_driver_take (PbTestDriver *driver, PbUrb *expected);
/* Submits a control request (OUT data copied in first when out_data is given) and asserts it
 * completed at once; returns it for the caller to inspect and free. */
PbUrb *pb_test_driver_control (PbTestDriver *driver, guint8 request_type, guint8 request, guint16 value,
                               guint16 index, guint16 length, const guint8 *out_data);
/* The same, then asserts the status and the returned data (data NULL: only its length). */
void pb_test_driver_expect_control (PbTestDriver *driver, guint8 request_type, guint8 request, guint16 value,
                                    guint16 index, guint16 length, const guint8 *out_data, gint32 status,
                                    const guint8 *data, guint32 data_len);

G_END_DECLS
