/* PbServer: the USB/IP server. Listens on TCP (IPv4 and IPv6, port 3240 by default), answers
 * OP_REQ_DEVLIST with the exported devices and OP_REQ_IMPORT by starting a PbExportSession on
 * the same connection. Many clients and devices at once on one main context (the thread-default
 * one of the thread that calls pb_server_listen()). */
#pragma once

#include <gio/gio.h>

#include "pb-device.h"
#include "pb-export-session.h"

G_BEGIN_DECLS

/* Virtual devices get bus numbers from here on, above any real bus, so bus IDs never collide. */
#define PB_SERVER_VIRTUAL_BUSNUM 100
/* A client must send its whole request within this many seconds. */
#define PB_SERVER_REQUEST_TIMEOUT_SECONDS 30

#define PB_TYPE_SERVER (pb_server_get_type ())
G_DECLARE_FINAL_TYPE (PbServer, pb_server, PB, SERVER, GObject)

PbServer *pb_server_new (void);

/* Exports device. A device without a bus ID gets the next virtual one ("100-1", "100-2"...).
 * Fails if the bus ID is taken. */
gboolean pb_server_add_device (PbServer *self, PbDevice *device, GError **error);
/* Stops exporting; a session using it is closed. */
void pb_server_remove_device (PbServer *self, PbDevice *device);
/* Exported devices, in the order they were added (PbDevice *; transfer none). */
GPtrArray *pb_server_get_devices (PbServer *self);
PbDevice *pb_server_find_device (PbServer *self, const char *busid);

/* address NULL: every address, IPv6 and IPv4. port 0: any free port (see pb_server_get_port). */
gboolean pb_server_listen (PbServer *self, const char *address, guint16 port, GError **error);
guint16 pb_server_get_port (PbServer *self);
/* Serve device on an already connected stream socket with no management phase (a socketpair
 * whose other end went to vhci-hcd). */
PbExportSession *pb_server_serve_socket (PbServer *self, GSocket *socket, PbDevice *device, GError **error);
/* Sessions currently open (PbExportSession *; transfer none). */
GPtrArray *pb_server_get_sessions (PbServer *self);
/* Stops listening and closes every session. */
void pb_server_stop (PbServer *self);

G_END_DECLS
