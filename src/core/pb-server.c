#define G_LOG_DOMAIN "plugboard"

#include "pb-server.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>

/* One accepted TCP connection in its management phase. */
typedef struct {
  PbServer *server;
  GSocketConnection *connection;
  GCancellable *cancellable;
  GSource *timeout;
  char *peer;
  guint8 request[PB_USBIP_REQ_IMPORT_SIZE];
  GBytes *reply;
} Client;

/* One imported device being served. */
typedef struct {
  PbServer *server;
  PbExportSession *session;
  GSocketConnection *connection; /* NULL for a bare socket */
  gulong closed_handler;
} ServedSession;

struct _PbServer {
  GObject parent_instance;

  GSocketService *service;
  guint16 port;
  GPtrArray *devices;
  GPtrArray *sessions; /* ServedSession */
  GList *clients;      /* Client, management phase */
  guint next_virtual_devnum;
};

enum {
  SIGNAL_SESSION_OPENED,
  SIGNAL_SESSION_CLOSED,
  SIGNAL_REQUEST_REJECTED,
  N_SIGNALS
};
static guint signals[N_SIGNALS];

G_DEFINE_FINAL_TYPE (PbServer, pb_server, G_TYPE_OBJECT)

/* ---- management phase ---- */

static char *
describe_peer (GSocketConnection *connection)
{
  g_autoptr(GSocketAddress) address = g_socket_connection_get_remote_address (connection, NULL);

  if (G_IS_INET_SOCKET_ADDRESS (address))
    {
      GInetSocketAddress *inet = G_INET_SOCKET_ADDRESS (address);
      g_autofree char *ip = g_inet_address_to_string (g_inet_socket_address_get_address (inet));
      guint16 port = g_inet_socket_address_get_port (inet);
      return strchr (ip, ':') != NULL ? g_strdup_printf ("[%s]:%u", ip, port) : g_strdup_printf ("%s:%u", ip, port);
    }
  return g_strdup ("local peer");
}

static void
client_free (Client *client)
{
  if (client->timeout != NULL)
    {
      g_source_destroy (client->timeout);
      g_source_unref (client->timeout);
    }
  g_cancellable_cancel (client->cancellable);
  g_object_unref (client->cancellable);
  g_clear_object (&client->connection);
  g_clear_pointer (&client->reply, g_bytes_unref);
  g_free (client->peer);
  g_free (client);
}

static void
client_finish (Client *client)
{
  PbServer *server = client->server;

  server->clients = g_list_remove (server->clients, client);
  if (client->connection != NULL)
    g_io_stream_close (G_IO_STREAM (client->connection), NULL, NULL);
  client_free (client);
}

static void
client_reject (Client *client, GError *error)
{
  g_signal_emit (client->server, signals[SIGNAL_REQUEST_REJECTED], 0, client->peer, error);
  g_error_free (error);
}

static void
on_reply_written (GObject *source, GAsyncResult *result, gpointer user_data)
{
  Client *client = user_data;
  g_autoptr(GError) error = NULL;

  if (!g_output_stream_write_all_finish (G_OUTPUT_STREAM (source), result, NULL, &error) &&
      g_error_matches (error, G_IO_ERROR, G_IO_ERROR_CANCELLED))
    return; /* the server is going away and freed the client */
  client_finish (client);
}

/* Sends reply and closes the connection (devlist, refusals). */
static void
client_reply_and_close (Client *client, GBytes *reply)
{
  GOutputStream *output = g_io_stream_get_output_stream (G_IO_STREAM (client->connection));

  client->reply = reply;
  g_output_stream_write_all_async (output, g_bytes_get_data (reply, NULL), g_bytes_get_size (reply),
                                   G_PRIORITY_DEFAULT, client->cancellable, on_reply_written, client);
}

static void
reply_op_status (Client *client, guint16 code, PbUsbipOpStatus status)
{
  guint8 header[PB_USBIP_OP_HEADER_SIZE];

  pb_usbip_op_header_encode (header, code, status);
  client_reply_and_close (client, g_bytes_new (header, sizeof header));
}

static void
handle_devlist (Client *client)
{
  PbServer *self = client->server;
  g_autoptr(GPtrArray) records = g_ptr_array_new_with_free_func (g_free);
  g_autoptr(GError) error = NULL;
  GBytes *reply;

  for (guint i = 0; i < self->devices->len; i++)
    {
      PbUsbipDeviceRecord *record = g_new0 (PbUsbipDeviceRecord, 1);
      pb_device_describe (self->devices->pdata[i], record);
      g_ptr_array_add (records, record);
    }
  reply = pb_usbip_rep_devlist_encode ((const PbUsbipDeviceRecord *const *) records->pdata, records->len, &error);
  if (reply == NULL)
    {
      g_warning ("cannot encode the device list: %s", error->message);
      reply_op_status (client, PB_USBIP_OP_REP_DEVLIST, PB_USBIP_ST_ERROR);
      return;
    }
  client_reply_and_close (client, reply);
}

static void
on_session_closed (PbExportSession *session, const GError *reason, gpointer user_data)
{
  ServedSession *served = user_data;
  PbServer *self = served->server;

  g_object_ref (self);
  g_signal_emit (self, signals[SIGNAL_SESSION_CLOSED], 0, session, reason);
  g_ptr_array_remove (self->sessions, served);
  g_object_unref (self);
}

static void
served_session_free (ServedSession *served)
{
  g_signal_handler_disconnect (served->session, served->closed_handler);
  if (!pb_export_session_is_closed (served->session))
    pb_export_session_close (served->session, NULL);
  g_object_unref (served->session);
  g_clear_object (&served->connection);
  g_free (served);
}

static ServedSession *
start_session (PbServer *self, GSocket *socket, GSocketConnection *connection, PbDevice *device,
               const char *peer, GError **error)
{
  g_autoptr(PbExportSession) session = pb_export_session_new (socket, device, peer);
  ServedSession *served;

  if (!pb_export_session_start (session, error))
    return NULL;
  served = g_new0 (ServedSession, 1);
  served->server = self;
  served->session = g_steal_pointer (&session);
  served->connection = connection != NULL ? g_object_ref (connection) : NULL;
  served->closed_handler = g_signal_connect (served->session, "closed", G_CALLBACK (on_session_closed), served);
  g_ptr_array_add (self->sessions, served);
  return served;
}

/* The import reply is small and goes to a socket nobody has written to: it fits the send
 * buffer at once. Waits briefly rather than never, in case the peer's window is tiny. */
static gboolean
send_small_reply (int fd, const guint8 *data, gsize len)
{
  gsize sent = 0;

  while (sent < len)
    {
      gssize n = send (fd, data + sent, len - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0)
        sent += (gsize) n;
      else if (n < 0 && errno == EINTR)
        continue;
      else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        {
          struct pollfd pfd = { .fd = fd, .events = POLLOUT };
          if (poll (&pfd, 1, 2000) <= 0)
            return FALSE;
        }
      else
        return FALSE;
    }
  return TRUE;
}

static void
handle_import (Client *client)
{
  PbServer *self = client->server;
  char busid[PB_USBIP_BUSID_SIZE + 1];
  g_autoptr(GError) error = NULL;
  PbUsbipDeviceRecord record;
  PbDevice *device;
  ServedSession *served;
  g_autoptr(GBytes) reply = NULL;
  GSocket *socket = g_socket_connection_get_socket (client->connection);

  if (!pb_usbip_busid_decode (client->request + PB_USBIP_OP_HEADER_SIZE, PB_USBIP_BUSID_SIZE, busid, &error))
    {
      client_reject (client, g_error_new (PB_ERROR, PB_ERROR_PROTOCOL, "bad import request: %s", error->message));
      reply_op_status (client, PB_USBIP_OP_REP_IMPORT, PB_USBIP_ST_NODEV);
      return;
    }
  device = pb_server_find_device (self, busid);
  if (device == NULL)
    {
      client_reject (client, g_error_new (PB_ERROR, PB_ERROR_NOT_FOUND, "import of %s: no such device", busid));
      reply_op_status (client, PB_USBIP_OP_REP_IMPORT, PB_USBIP_ST_NODEV);
      return;
    }
  if (pb_device_is_busy (device))
    {
      client_reject (client, g_error_new (PB_ERROR, PB_ERROR_BUSY, "import of %s: device is in use", busid));
      reply_op_status (client, PB_USBIP_OP_REP_IMPORT, PB_USBIP_ST_DEV_BUSY);
      return;
    }

  /* Opening the device reserves it before anything else can run on this main context. */
  served = start_session (self, socket, client->connection, device, client->peer, &error);
  if (served == NULL)
    {
      client_reject (client, g_error_new (PB_ERROR, PB_ERROR_DEVICE, "import of %s: %s", busid, error->message));
      reply_op_status (client, PB_USBIP_OP_REP_IMPORT, PB_USBIP_ST_DEV_ERR);
      return;
    }
  pb_device_describe (device, &record);
  reply = pb_usbip_rep_import_encode (PB_USBIP_ST_OK, &record, &error);
  if (reply == NULL || !send_small_reply (g_socket_get_fd (socket), g_bytes_get_data (reply, NULL),
                                          g_bytes_get_size (reply)))
    {
      g_autoptr(GError) reason = g_error_new (PB_ERROR, PB_ERROR_CLOSED, "could not send the import reply to %s",
                                             client->peer);
      pb_export_session_close (served->session, reason);
    }
  else
    g_signal_emit (self, signals[SIGNAL_SESSION_OPENED], 0, served->session);

  /* The session owns the connection now. */
  self->clients = g_list_remove (self->clients, client);
  client_free (client);
}

static void
on_busid_read (GObject *source, GAsyncResult *result, gpointer user_data)
{
  Client *client = user_data;
  g_autoptr(GError) error = NULL;
  gsize n = 0;

  if (!g_input_stream_read_all_finish (G_INPUT_STREAM (source), result, &n, &error))
    {
      if (g_error_matches (error, G_IO_ERROR, G_IO_ERROR_CANCELLED))
        return;
      client_finish (client);
      return;
    }
  if (n < PB_USBIP_BUSID_SIZE)
    {
      client_reject (client, g_error_new (PB_ERROR, PB_ERROR_PROTOCOL, "import request truncated (%" G_GSIZE_FORMAT
                                          " of 32 bus ID bytes)", n));
      client_finish (client);
      return;
    }
  handle_import (client);
}

static void
on_header_read (GObject *source, GAsyncResult *result, gpointer user_data)
{
  Client *client = user_data;
  g_autoptr(GError) error = NULL;
  PbUsbipOpHeader header;
  gsize n = 0;

  if (!g_input_stream_read_all_finish (G_INPUT_STREAM (source), result, &n, &error))
    {
      if (g_error_matches (error, G_IO_ERROR, G_IO_ERROR_CANCELLED))
        return;
      client_finish (client);
      return;
    }
  if (n < PB_USBIP_OP_HEADER_SIZE)
    {
      /* Port scanners and health checks connect and leave: not worth a line. */
      if (n > 0)
        client_reject (client, g_error_new (PB_ERROR, PB_ERROR_PROTOCOL, "request truncated (%" G_GSIZE_FORMAT
                                            " of 8 header bytes)", n));
      client_finish (client);
      return;
    }
  if (!pb_usbip_op_header_decode (client->request, n, &header, &error))
    {
      guint16 reply_code = header.code == PB_USBIP_OP_REQ_IMPORT ? PB_USBIP_OP_REP_IMPORT : PB_USBIP_OP_REP_DEVLIST;
      client_reject (client, g_steal_pointer (&error));
      /* Answer in our version with an error status: the client can tell what went wrong. */
      reply_op_status (client, reply_code, PB_USBIP_ST_ERROR);
      return;
    }

  switch (header.code)
    {
    case PB_USBIP_OP_REQ_DEVLIST:
      handle_devlist (client);
      return;
    case PB_USBIP_OP_REQ_IMPORT:
      g_input_stream_read_all_async (g_io_stream_get_input_stream (G_IO_STREAM (client->connection)),
                                     client->request + PB_USBIP_OP_HEADER_SIZE, PB_USBIP_BUSID_SIZE,
                                     G_PRIORITY_DEFAULT, client->cancellable, on_busid_read, client);
      return;
    default:
      client_reject (client, g_error_new (PB_ERROR, PB_ERROR_PROTOCOL, "unknown request code 0x%04x", header.code));
      client_finish (client);
      return;
    }
}

static gboolean
on_client_timeout (gpointer user_data)
{
  Client *client = user_data;

  client_reject (client, g_error_new (PB_ERROR, PB_ERROR_TIMED_OUT, "no complete request within %d s",
                                      PB_SERVER_REQUEST_TIMEOUT_SECONDS));
  g_source_unref (client->timeout);
  client->timeout = NULL;
  client_finish (client);
  return G_SOURCE_REMOVE;
}

static gboolean
on_incoming (GSocketService *service, GSocketConnection *connection, GObject *source_object, gpointer user_data)
{
  PbServer *self = user_data;
  GSocket *socket = g_socket_connection_get_socket (connection);
  Client *client = g_new0 (Client, 1);
  int one = 1;

  setsockopt (g_socket_get_fd (socket), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  g_socket_set_keepalive (socket, TRUE);

  client->server = self;
  client->connection = g_object_ref (connection);
  client->cancellable = g_cancellable_new ();
  client->peer = describe_peer (connection);
  client->timeout = g_timeout_source_new_seconds (PB_SERVER_REQUEST_TIMEOUT_SECONDS);
  g_source_set_callback (client->timeout, on_client_timeout, client, NULL);
  g_source_attach (client->timeout, g_main_context_get_thread_default ());
  self->clients = g_list_prepend (self->clients, client);

  g_input_stream_read_all_async (g_io_stream_get_input_stream (G_IO_STREAM (connection)), client->request,
                                 PB_USBIP_OP_HEADER_SIZE, G_PRIORITY_DEFAULT, client->cancellable,
                                 on_header_read, client);
  return TRUE;
}

/* ---- public ---- */

PbServer *
pb_server_new (void)
{
  return g_object_new (PB_TYPE_SERVER, NULL);
}

PbDevice *
pb_server_find_device (PbServer *self, const char *busid)
{
  g_return_val_if_fail (PB_IS_SERVER (self), NULL);

  for (guint i = 0; i < self->devices->len; i++)
    if (g_strcmp0 (pb_device_get_busid (self->devices->pdata[i]), busid) == 0)
      return self->devices->pdata[i];
  return NULL;
}

/* Unplugged: off the list. Its session closes itself (see PbExportSession). */
static void
on_device_vanished (PbDevice *device, gpointer user_data)
{
  PbServer *self = user_data;

  g_signal_handlers_disconnect_by_func (device, on_device_vanished, self);
  g_ptr_array_remove (self->devices, device);
}

gboolean
pb_server_add_device (PbServer *self, PbDevice *device, GError **error)
{
  g_return_val_if_fail (PB_IS_SERVER (self), FALSE);
  g_return_val_if_fail (PB_IS_DEVICE (device), FALSE);

  if (pb_device_get_busid (device) == NULL)
    {
      guint32 devnum = self->next_virtual_devnum++;
      g_autofree char *busid = g_strdup_printf ("%u-%u", PB_SERVER_VIRTUAL_BUSNUM, devnum);
      pb_device_set_address (device, PB_SERVER_VIRTUAL_BUSNUM, devnum, busid);
    }
  if (pb_server_find_device (self, pb_device_get_busid (device)) != NULL)
    {
      g_set_error (error, PB_ERROR, PB_ERROR_BUSY, "bus ID %s is already exported", pb_device_get_busid (device));
      return FALSE;
    }
  g_ptr_array_add (self->devices, g_object_ref (device));
  g_signal_connect (device, "vanished", G_CALLBACK (on_device_vanished), self);
  return TRUE;
}

void
pb_server_remove_device (PbServer *self, PbDevice *device)
{
  g_return_if_fail (PB_IS_SERVER (self));

  for (guint i = 0; i < self->sessions->len; i++)
    {
      ServedSession *served = self->sessions->pdata[i];
      if (pb_export_session_get_device (served->session) == device)
        {
          g_autoptr(GError) reason = g_error_new (PB_ERROR, PB_ERROR_DEVICE, "%s is no longer shared",
                                                  pb_device_get_busid (device));
          pb_export_session_close (served->session, reason);
        }
    }
  g_signal_handlers_disconnect_by_func (device, on_device_vanished, self);
  g_ptr_array_remove (self->devices, device);
}

GPtrArray *
pb_server_get_devices (PbServer *self)
{
  g_return_val_if_fail (PB_IS_SERVER (self), NULL);
  return self->devices;
}

GPtrArray *
pb_server_get_sessions (PbServer *self)
{
  g_autoptr(GPtrArray) sessions = g_ptr_array_new ();

  g_return_val_if_fail (PB_IS_SERVER (self), NULL);
  for (guint i = 0; i < self->sessions->len; i++)
    g_ptr_array_add (sessions, ((ServedSession *) self->sessions->pdata[i])->session);
  return g_steal_pointer (&sessions);
}

gboolean
pb_server_listen (PbServer *self, const char *address, guint16 port, GError **error)
{
  g_autoptr(GError) local_error = NULL;
  GSocketListener *listener;

  g_return_val_if_fail (PB_IS_SERVER (self), FALSE);

  if (self->service == NULL)
    {
      self->service = g_socket_service_new ();
      /* GSocketListener's default backlog of 10 drops SYNs when clients connect in a burst
       * (each costs the client a 1 s retransmission). Set before any address is added. */
      g_socket_listener_set_backlog (G_SOCKET_LISTENER (self->service), SOMAXCONN);
      g_signal_connect (self->service, "incoming", G_CALLBACK (on_incoming), self);
    }
  listener = G_SOCKET_LISTENER (self->service);

  if (address == NULL)
    {
      if (port == 0)
        port = g_socket_listener_add_any_inet_port (listener, NULL, &local_error);
      else if (!g_socket_listener_add_inet_port (listener, port, NULL, &local_error))
        port = 0;
    }
  else
    {
      g_autoptr(GInetAddress) inet = g_inet_address_new_from_string (address);
      g_autoptr(GSocketAddress) socket_address = NULL;
      g_autoptr(GSocketAddress) effective = NULL;

      if (inet == NULL)
        {
          g_set_error (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT, "“%s” is not an IP address", address);
          return FALSE;
        }
      socket_address = g_inet_socket_address_new (inet, port);
      if (g_socket_listener_add_address (listener, socket_address, G_SOCKET_TYPE_STREAM, G_SOCKET_PROTOCOL_TCP,
                                         NULL, &effective, &local_error))
        port = g_inet_socket_address_get_port (G_INET_SOCKET_ADDRESS (effective));
      else
        port = 0;
    }
  if (port == 0)
    {
      g_set_error (error, PB_ERROR, PB_ERROR_FAILED, "cannot listen on %s port %u: %s",
                   address != NULL ? address : "all addresses", port, local_error->message);
      return FALSE;
    }
  self->port = port;
  g_socket_service_start (self->service);
  return TRUE;
}

guint16
pb_server_get_port (PbServer *self)
{
  g_return_val_if_fail (PB_IS_SERVER (self), 0);
  return self->port;
}

PbExportSession *
pb_server_serve_socket (PbServer *self, GSocket *socket, PbDevice *device, GError **error)
{
  ServedSession *served;

  g_return_val_if_fail (PB_IS_SERVER (self), NULL);

  if (pb_device_is_busy (device))
    {
      g_set_error (error, PB_ERROR, PB_ERROR_BUSY, "device %s is in use", pb_device_get_busid (device));
      return NULL;
    }
  served = start_session (self, socket, NULL, device, "local socket", error);
  if (served == NULL)
    return NULL;
  g_signal_emit (self, signals[SIGNAL_SESSION_OPENED], 0, served->session);
  return served->session;
}

void
pb_server_stop (PbServer *self)
{
  g_return_if_fail (PB_IS_SERVER (self));

  if (self->service != NULL)
    {
      g_socket_service_stop (self->service);
      g_socket_listener_close (G_SOCKET_LISTENER (self->service));
      g_signal_handlers_disconnect_by_data (self->service, self);
      g_clear_object (&self->service);
    }
  while (self->clients != NULL)
    client_finish (self->clients->data);
  for (guint i = 0; i < self->sessions->len; i++)
    {
      ServedSession *served = self->sessions->pdata[i];
      g_autoptr(GError) reason = g_error_new_literal (PB_ERROR, PB_ERROR_CLOSED, "server stopped");
      pb_export_session_close (served->session, reason);
    }
}

static void
pb_server_dispose (GObject *object)
{
  PbServer *self = PB_SERVER (object);

  pb_server_stop (self);
  g_ptr_array_set_size (self->sessions, 0);
  for (guint i = 0; i < self->devices->len; i++)
    g_signal_handlers_disconnect_by_func (self->devices->pdata[i], on_device_vanished, self);
  G_OBJECT_CLASS (pb_server_parent_class)->dispose (object);
}

static void
pb_server_finalize (GObject *object)
{
  PbServer *self = PB_SERVER (object);

  g_ptr_array_unref (self->sessions);
  g_ptr_array_unref (self->devices);
  G_OBJECT_CLASS (pb_server_parent_class)->finalize (object);
}

static void
pb_server_class_init (PbServerClass *klass)
{
  GObjectClass *object_class = G_OBJECT_CLASS (klass);

  object_class->dispose = pb_server_dispose;
  object_class->finalize = pb_server_finalize;

  /* session-opened (PbExportSession *session): a client imported a device. */
  signals[SIGNAL_SESSION_OPENED] = g_signal_new ("session-opened", G_TYPE_FROM_CLASS (klass), G_SIGNAL_RUN_LAST, 0,
                                                 NULL, NULL, NULL, G_TYPE_NONE, 1, PB_TYPE_EXPORT_SESSION);
  /* session-closed (PbExportSession *session, const GError *reason): the device is free again. */
  signals[SIGNAL_SESSION_CLOSED] = g_signal_new ("session-closed", G_TYPE_FROM_CLASS (klass), G_SIGNAL_RUN_LAST, 0,
                                                 NULL, NULL, NULL, G_TYPE_NONE, 2, PB_TYPE_EXPORT_SESSION,
                                                 G_TYPE_ERROR);
  /* request-rejected (const char *peer, const GError *reason): a request was refused or malformed. */
  signals[SIGNAL_REQUEST_REJECTED] = g_signal_new ("request-rejected", G_TYPE_FROM_CLASS (klass), G_SIGNAL_RUN_LAST,
                                                   0, NULL, NULL, NULL, G_TYPE_NONE, 2, G_TYPE_STRING, G_TYPE_ERROR);
}

static void
pb_server_init (PbServer *self)
{
  self->devices = g_ptr_array_new_with_free_func (g_object_unref);
  self->sessions = g_ptr_array_new_with_free_func ((GDestroyNotify) served_session_free);
  self->next_virtual_devnum = 1;
}
