/* PbRemote: the client side of the management phase: list a server's devices and import one.
 * Synchronous (blocking with timeouts), for the CLI, tests and benchmarks. */
#pragma once

#include <gio/gio.h>

#include "pb-usbip.h"
#include "pb-remote-device.h"

G_BEGIN_DECLS

/* Seconds to wait for the server at each step before PB_ERROR_TIMED_OUT. */
#define PB_REMOTE_TIMEOUT_SECONDS 10

/* Opens a TCP connection to host:port (TCP_NODELAY, keepalive). Errors name the cause:
 * PB_ERROR_REFUSED "connection to HOST:PORT refused", PB_ERROR_UNREACHABLE unknown host or no route,
 * PB_ERROR_TIMED_OUT. */
GSocketConnection *pb_remote_connect (const char *host, guint16 port, GCancellable *cancellable, GError **error);

/* OP_REQ_DEVLIST: returns PbUsbipDeviceRecord * elements (free with the array). Refuses more
 * than PB_USBIP_MAX_DEVLIST_DEVICES devices; PB_ERROR_VERSION_MISMATCH when the server speaks
 * another version. */
GPtrArray *pb_remote_list_devices (const char *host, guint16 port, GCancellable *cancellable, GError **error);
GPtrArray *pb_remote_list_devices_on (GSocketConnection *connection, GCancellable *cancellable, GError **error);

/* OP_REQ_IMPORT busid. On success the connection now carries URBs for the device: record is
 * filled from the reply (checked to name the same busid). Errors: PB_ERROR_BUSY (DEV_BUSY),
 * PB_ERROR_NOT_FOUND (NODEV), PB_ERROR_DEVICE (DEV_ERR), PB_ERROR_FAILED (NA/ERROR),
 * PB_ERROR_VERSION_MISMATCH, PB_ERROR_PROTOCOL (malformed reply). */
gboolean pb_remote_import_on (GSocketConnection *connection, const char *busid, PbUsbipDeviceRecord *record,
                              GCancellable *cancellable, GError **error);

/* Connect + import + wrap in a PbRemoteDevice served on the thread-default main context. */
PbRemoteDevice *pb_remote_import (const char *host, guint16 port, const char *busid,
                                  GCancellable *cancellable, GError **error);

G_END_DECLS
