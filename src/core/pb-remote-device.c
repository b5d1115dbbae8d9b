#define G_LOG_DOMAIN "plugboard"

#include "pb-remote-device.h"
#include "pb-output-queue.h"

#include <errno.h>
#include <glib-unix.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#define READS_PER_WAKEUP 16
#define STAGE_SIZE (64 * 1024)
/* After a timed-out transfer is unlinked, the server gets as long again (within these bounds)
 * to answer before the connection is given up. */
#define UNLINK_GRACE_MIN_MS 1000
#define UNLINK_GRACE_MAX_MS 10000

typedef struct {
  PbOutputItem base;          /* first */
  guint8 header[PB_USBIP_URB_HEADER_SIZE];
  gboolean standalone;        /* a CMD_UNLINK, freed once written; else embedded in a Pending */
} OutItem;

typedef struct {
  OutItem out;                /* first: CMD_SUBMIT */
  guint32 seqnum;
  PbRemoteUrbRequest request;
  guint8 *iso_wire;
  PbRemoteUrbCallback callback;
  gpointer user_data;
  gboolean queued;            /* its CMD_SUBMIT is still in the output queue */
} Pending;

typedef enum {
  READ_HEADER,
  READ_PAYLOAD,
  READ_ISO,
} ReadState;

struct _PbRemoteDevice {
  GObject parent_instance;

  GSocketConnection *connection; /* may be NULL (bare socket) */
  GSocket *socket;
  int fd;
  PbUsbipDeviceRecord record;
  GMainContext *context;
  GSource *fd_source;
  gpointer fd_tag;
  GIOCondition fd_condition;

  guint32 next_seqnum;
  GHashTable *pending;        /* seqnum → Pending */
  GHashTable *unlinks;        /* unlink seqnum → target seqnum */

  PbOutputQueue output;       /* OutItem */

  /* Input. All of it lives here, not in locals, so that a callback which iterates the main
   * context (a blocking helper called from a callback) can carry on reading where we are. */
  guint8 header_buf[PB_USBIP_URB_HEADER_SIZE];
  gsize header_filled;
  ReadState read_state;
  Pending *reading;           /* taken out of pending while its payload arrives */
  PbUsbipUrbHeader reading_header;
  gsize payload_filled;
  guint8 *iso_buf;
  gsize iso_filled, iso_need;
  guint8 *stage;              /* STAGE_SIZE bytes of received input */
  gsize stage_pos, stage_len; /* consumed / received bytes of stage */

  gboolean closed;
  GError *close_error;
};

G_DEFINE_FINAL_TYPE (PbRemoteDevice, pb_remote_device, G_TYPE_OBJECT)

static void fail (PbRemoteDevice *self, gint code, const char *format, ...) G_GNUC_PRINTF (3, 4);

static void
pending_free (Pending *pending)
{
  g_free (pending->iso_wire);
  g_free (pending);
}

/* An item left the output queue: written, or dropped with the connection. */
static void
on_item_written (PbOutputItem *base, gpointer user_data)
{
  OutItem *item = (OutItem *) base;

  if (item->standalone)
    g_free (item);
  else
    ((Pending *) item)->queued = FALSE;
}

/* The pending must be out of every table and out of the output queue. */
static void
call_back (PbRemoteDevice *self, Pending *pending, gint32 status, guint32 actual_length, gint32 error_count,
           gint32 start_frame)
{
  PbRemoteUrbResult result = { pending->seqnum, status, actual_length, error_count, start_frame };

  if (pending->callback != NULL)
    pending->callback (self, &result, pending->user_data);
  pending_free (pending);
}

static void
update_condition (PbRemoteDevice *self)
{
  GIOCondition condition = G_IO_IN;

  if (self->fd_source == NULL)
    return;
  if (!pb_output_queue_is_empty (&self->output))
    condition |= G_IO_OUT;
  if (condition != self->fd_condition)
    {
      g_source_modify_unix_fd (self->fd_source, self->fd_tag, condition);
      self->fd_condition = condition;
    }
}

static gint
compare_seqnum (gconstpointer a, gconstpointer b)
{
  guint32 sa = ((const Pending *) a)->seqnum, sb = ((const Pending *) b)->seqnum;
  return sa < sb ? -1 : sa > sb;
}

/* Ends the connection: every pending URB is called back with -ESHUTDOWN, exactly once. */
static void
shut_down (PbRemoteDevice *self)
{
  g_autoptr(GHashTable) pending = NULL;
  g_autoptr(GList) list = NULL;

  if (self->closed)
    return;
  self->closed = TRUE;
  /* A callback may drop the last reference to us. */
  g_object_ref (self);
  if (self->fd_source != NULL)
    {
      g_source_destroy (self->fd_source);
      g_clear_pointer (&self->fd_source, g_source_unref);
    }
  g_socket_close (self->socket, NULL);
  pb_output_queue_clear (&self->output, on_item_written, self);
  self->stage_pos = self->stage_len = 0;
  if (self->reading != NULL)
    {
      g_hash_table_insert (self->pending, GUINT_TO_POINTER (self->reading->seqnum), self->reading);
      self->reading = NULL;
    }

  /* Steal the table first: callbacks may submit (refused now) or close again. */
  pending = g_steal_pointer (&self->pending);
  self->pending = g_hash_table_new (g_direct_hash, g_direct_equal);
  list = g_list_sort (g_hash_table_get_values (pending), compare_seqnum);
  for (GList *l = list; l != NULL; l = l->next)
    call_back (self, l->data, PB_URB_ESHUTDOWN, 0, 0, 0);
  g_object_unref (self);
}

/* The server broke the protocol or the connection: remember why, then shut down. */
static void
fail (PbRemoteDevice *self, gint code, const char *format, ...)
{
  va_list args;

  if (self->closed)
    return;
  va_start (args, format);
  self->close_error = g_error_new_valist (PB_ERROR, code, format, args);
  va_end (args);
  /* A peer's misbehaviour is not a bug here: the reason goes to the caller, not to stderr. */
  g_debug ("USB/IP connection to %s closed: %s", self->record.busid, self->close_error->message);
  shut_down (self);
}

/* ---- output ---- */

static void
flush_output (PbRemoteDevice *self)
{
  if (self->closed)
    return;
  if (pb_output_queue_flush (&self->output, self->fd, on_item_written, self) < 0)
    {
      fail (self, PB_ERROR_CLOSED, "writing to the server failed: %s", g_strerror (errno));
      return;
    }
  update_condition (self);
}

/* Queues and writes what the socket takes. A write error is left for the next dispatch to
 * report (the socket polls as ready once it failed), so that submit and unlink never call
 * anybody back before they return. */
static void
queue_item (PbRemoteDevice *self, OutItem *item)
{
  pb_output_queue_push (&self->output, &item->base);
  pb_output_queue_flush (&self->output, self->fd, on_item_written, self);
  update_condition (self);
}

/* ---- input ---- */

/* Moves iso IN data from where it arrived (packed, packet after packet) to each packet's offset. */
static void
unpack_iso (PbRemoteUrbRequest *request, const PbUsbipIsoPacket *packets, guint64 total)
{
  gboolean in_place = TRUE;
  guint64 end = 0;
  g_autofree guint8 *copy = NULL;
  guint64 position;

  if (total == 0)
    return;
  /* With ascending, disjoint packets every one moves forward: last first needs no copy. */
  for (guint i = 0; i < request->n_iso_packets; i++)
    {
      if (request->iso_packets[i].offset < end)
        in_place = FALSE;
      end = (guint64) request->iso_packets[i].offset + request->iso_packets[i].length;
    }
  if (in_place)
    {
      position = total;
      for (guint i = request->n_iso_packets; i-- > 0;)
        {
          position -= packets[i].actual_length;
          if (packets[i].actual_length > 0 && request->iso_packets[i].offset != position)
            memmove (request->buffer + request->iso_packets[i].offset, request->buffer + position,
                     packets[i].actual_length);
        }
      return;
    }
  copy = g_memdup2 (request->buffer, total);
  position = 0;
  for (guint i = 0; i < request->n_iso_packets; i++)
    {
      memcpy (request->buffer + request->iso_packets[i].offset, copy + position, packets[i].actual_length);
      position += packets[i].actual_length;
    }
}

/* The whole RET_SUBMIT of self->reading has arrived. */
static void
finish_reading (PbRemoteDevice *self)
{
  Pending *pending = self->reading;
  PbUsbipUrbHeader h = self->reading_header;
  PbRemoteUrbRequest *request = &pending->request;

  if (request->n_iso_packets > 0 && self->iso_need == 0)
    {
      /* Failed before any packet: no descriptors came. */
      for (guint i = 0; i < request->n_iso_packets; i++)
        request->iso_packets[i].actual_length = 0;
    }
  else if (request->n_iso_packets > 0)
    {
      g_autoptr(GError) error = NULL;
      g_autofree PbUsbipIsoPacket *packets = g_new (PbUsbipIsoPacket, request->n_iso_packets);
      guint64 sum = 0;

      if (!pb_usbip_iso_packets_decode (self->iso_buf, self->iso_need, request->n_iso_packets, request->length,
                                        packets, &error))
        {
          fail (self, PB_ERROR_PROTOCOL, "RET_SUBMIT %u: bad iso descriptors: %s", h.seqnum, error->message);
          return;
        }
      for (guint i = 0; i < request->n_iso_packets; i++)
        {
          /* Our own packet lengths bound what lands at our offsets, whatever the server says. */
          if (packets[i].actual_length > request->iso_packets[i].length)
            {
              fail (self, PB_ERROR_PROTOCOL, "RET_SUBMIT %u: iso packet %u claims %u bytes of %u", h.seqnum, i,
                    packets[i].actual_length, request->iso_packets[i].length);
              return;
            }
          sum += packets[i].actual_length;
        }
      if (request->direction == PB_USBIP_DIR_IN)
        {
          if (sum != h.u.ret_submit.actual_length)
            {
              fail (self, PB_ERROR_PROTOCOL, "RET_SUBMIT %u: iso packets hold %" G_GUINT64_FORMAT
                    " bytes but the reply says %u", h.seqnum, sum, h.u.ret_submit.actual_length);
              return;
            }
          unpack_iso (request, packets, sum);
        }
      for (guint i = 0; i < request->n_iso_packets; i++)
        {
          request->iso_packets[i].actual_length = packets[i].actual_length;
          request->iso_packets[i].status = packets[i].status;
        }
    }

  /* Ready for the next message before anybody is called: the callback may read on. */
  self->reading = NULL;
  self->read_state = READ_HEADER;
  self->header_filled = 0;
  call_back (self, pending, h.u.ret_submit.status, h.u.ret_submit.actual_length, h.u.ret_submit.error_count,
             h.u.ret_submit.start_frame);
}

static void
payload_done (PbRemoteDevice *self)
{
  if (self->iso_need > 0)
    self->read_state = READ_ISO;
  else
    finish_reading (self);
}

static void
handle_ret_unlink (PbRemoteDevice *self, const PbUsbipUrbHeader *header)
{
  gpointer target;
  Pending *pending;

  if (!g_hash_table_steal_extended (self->unlinks, GUINT_TO_POINTER (header->seqnum), NULL, &target))
    {
      fail (self, PB_ERROR_PROTOCOL, "RET_UNLINK for unknown seqnum %u", header->seqnum);
      return;
    }
  pending = g_hash_table_lookup (self->pending, target);
  /* Status 0: the target completed first, its RET_SUBMIT called back or still to come. */
  if (pending == NULL || header->u.ret_unlink.status == 0)
    return;
  if (pending->queued)
    {
      /* Its request is still being written from that memory. */
      fail (self, PB_ERROR_PROTOCOL, "RET_UNLINK %u arrived before its target was fully sent", header->seqnum);
      return;
    }
  g_hash_table_remove (self->pending, target);
  call_back (self, pending, header->u.ret_unlink.status, 0, 0, 0);
}

static void
handle_ret_submit (PbRemoteDevice *self, PbUsbipUrbHeader *header)
{
  Pending *pending = g_hash_table_lookup (self->pending, GUINT_TO_POINTER (header->seqnum));
  PbRemoteUrbRequest *request;
  gint32 n_packets = header->u.ret_submit.number_of_packets;

  if (pending == NULL)
    {
      fail (self, PB_ERROR_PROTOCOL, "RET_SUBMIT for unknown seqnum %u", header->seqnum);
      return;
    }
  request = &pending->request;
  if (pending->queued)
    {
      fail (self, PB_ERROR_PROTOCOL, "RET_SUBMIT %u arrived before its request was fully sent", header->seqnum);
      return;
    }
  if (header->u.ret_submit.actual_length > request->length)
    {
      fail (self, PB_ERROR_PROTOCOL, "RET_SUBMIT %u claims %u bytes for a %u-byte request", header->seqnum,
            header->u.ret_submit.actual_length, request->length);
      return;
    }
  self->iso_need = 0;
  if (request->n_iso_packets > 0)
    {
      if (n_packets == (gint32) request->n_iso_packets)
        self->iso_need = (gsize) request->n_iso_packets * PB_USBIP_ISO_PACKET_SIZE;
      else if (!(n_packets == 0 && header->u.ret_submit.status != 0 &&
                 (request->direction == PB_USBIP_DIR_OUT || header->u.ret_submit.actual_length == 0)))
        {
          fail (self, PB_ERROR_PROTOCOL, "RET_SUBMIT %u carries %d iso packets for %u", header->seqnum, n_packets,
                request->n_iso_packets);
          return;
        }
    }
  /* Servers zero the direction: it is the request's. */
  header->direction = request->direction;
  g_hash_table_steal (self->pending, GUINT_TO_POINTER (header->seqnum));
  self->reading = pending;
  self->reading_header = *header;
  self->payload_filled = 0;
  self->iso_filled = 0;
  if (self->iso_need > 0)
    self->iso_buf = g_realloc (self->iso_buf, self->iso_need);
  if (pb_usbip_urb_payload_length (header) > 0)
    self->read_state = READ_PAYLOAD;
  else
    payload_done (self);
}

static void
handle_header (PbRemoteDevice *self)
{
  PbUsbipUrbHeader header;
  g_autoptr(GError) error = NULL;

  if (!pb_usbip_urb_header_decode (self->header_buf, sizeof self->header_buf, &header, &error))
    {
      fail (self, PB_ERROR_PROTOCOL, "%s", error->message);
      return;
    }
  switch (header.command)
    {
    case PB_USBIP_RET_SUBMIT:
      handle_ret_submit (self, &header);
      break;
    case PB_USBIP_RET_UNLINK:
      self->header_filled = 0;
      handle_ret_unlink (self, &header);
      break;
    default:
      fail (self, PB_ERROR_PROTOCOL, "unexpected command %u from the server", header.command);
      break;
    }
}

/* Feeds the received bytes in stage through the reply state machine. Each step accounts for
 * its bytes before it may call anybody back. */
static void
consume_staged (PbRemoteDevice *self)
{
  while (self->stage_pos < self->stage_len && !self->closed)
    {
      const guint8 *data = self->stage + self->stage_pos;
      gsize len = self->stage_len - self->stage_pos;
      gsize take;

      switch (self->read_state)
        {
        case READ_HEADER:
          take = MIN (len, sizeof self->header_buf - self->header_filled);
          memcpy (self->header_buf + self->header_filled, data, take);
          self->header_filled += take;
          self->stage_pos += take;
          if (self->header_filled == sizeof self->header_buf)
            handle_header (self);
          break;
        case READ_PAYLOAD:
          take = MIN (len, self->reading_header.u.ret_submit.actual_length - self->payload_filled);
          memcpy (self->reading->request.buffer + self->payload_filled, data, take);
          self->payload_filled += take;
          self->stage_pos += take;
          if (self->payload_filled == self->reading_header.u.ret_submit.actual_length)
            payload_done (self);
          break;
        case READ_ISO:
        default:
          take = MIN (len, self->iso_need - self->iso_filled);
          memcpy (self->iso_buf + self->iso_filled, data, take);
          self->iso_filled += take;
          self->stage_pos += take;
          if (self->iso_filled == self->iso_need)
            finish_reading (self);
          break;
        }
    }
}

static void
read_socket (PbRemoteDevice *self)
{
  /* Leftovers of an outer dispatch whose callback iterates the main context come first. */
  consume_staged (self);

  for (int round = 0; round < READS_PER_WAKEUP && !self->closed; round++)
    {
      gboolean direct = FALSE;
      guint8 *target = self->stage;
      gsize want = STAGE_SIZE;
      gssize n;

      /* Large IN data goes straight to the caller's buffer; everything else (headers, short
       * payloads, iso descriptors) arrives in one read through the staging buffer. */
      if (self->read_state == READ_PAYLOAD &&
          self->reading_header.u.ret_submit.actual_length - self->payload_filled >= STAGE_SIZE)
        {
          direct = TRUE;
          target = self->reading->request.buffer + self->payload_filled;
          want = self->reading_header.u.ret_submit.actual_length - self->payload_filled;
        }
      n = recv (self->fd, target, want, MSG_DONTWAIT);
      if (n == 0)
        {
          fail (self, PB_ERROR_CLOSED, "the server closed the connection");
          return;
        }
      if (n < 0)
        {
          if (errno == EINTR)
            continue;
          if (errno != EAGAIN && errno != EWOULDBLOCK)
            fail (self, PB_ERROR_CLOSED, "reading from the server failed: %s", g_strerror (errno));
          return;
        }
      if (direct)
        {
          self->payload_filled += (gsize) n;
          if (self->payload_filled == self->reading_header.u.ret_submit.actual_length)
            payload_done (self);
        }
      else
        {
          self->stage_pos = 0;
          self->stage_len = (gsize) n;
          consume_staged (self);
        }
      /* A short read means the socket is empty: skip the recv that would say EAGAIN. */
      if ((gsize) n < want)
        return;
    }
}

typedef struct {
  GSource source;
  PbRemoteDevice *device; /* unowned: the device destroys the source first */
} DeviceSource;

static gboolean
fd_source_dispatch (GSource *source, GSourceFunc callback, gpointer user_data)
{
  PbRemoteDevice *self = g_object_ref (((DeviceSource *) source)->device);
  GIOCondition condition = g_source_query_unix_fd (source, self->fd_tag);

  /* Read first: what the server sent before it went away still completes its URBs. */
  if (condition & (G_IO_IN | G_IO_HUP | G_IO_ERR))
    read_socket (self);
  if (!self->closed && (condition & (G_IO_OUT | G_IO_ERR)))
    flush_output (self);
  g_object_unref (self);
  return G_SOURCE_CONTINUE;
}

static GSourceFuncs fd_source_funcs = { .dispatch = fd_source_dispatch };

/* ---- public ---- */

static PbRemoteDevice *
remote_device_new (GSocketConnection *connection, GSocket *socket, const PbUsbipDeviceRecord *record)
{
  PbRemoteDevice *self = g_object_new (PB_TYPE_REMOTE_DEVICE, NULL);
  int one = 1;

  self->connection = connection != NULL ? g_object_ref (connection) : NULL;
  self->socket = g_object_ref (socket);
  self->fd = g_socket_get_fd (socket);
  self->record = *record;
  g_socket_set_blocking (socket, FALSE);
  if (g_socket_get_family (socket) != G_SOCKET_FAMILY_UNIX)
    setsockopt (self->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);

  self->context = g_main_context_ref_thread_default ();
  self->fd_source = g_source_new (&fd_source_funcs, sizeof (DeviceSource));
  ((DeviceSource *) self->fd_source)->device = self;
  self->fd_tag = g_source_add_unix_fd (self->fd_source, self->fd, G_IO_IN);
  self->fd_condition = G_IO_IN;
  g_source_set_name (self->fd_source, "PbRemoteDevice socket");
  /* A callback may wait for another URB (blocking helpers iterate the context): the reader
   * keeps its state in the object, so a nested dispatch simply reads on. */
  g_source_set_can_recurse (self->fd_source, TRUE);
  g_source_attach (self->fd_source, self->context);
  return self;
}

PbRemoteDevice *
pb_remote_device_new (GSocketConnection *connection, const PbUsbipDeviceRecord *record)
{
  g_return_val_if_fail (G_IS_SOCKET_CONNECTION (connection), NULL);
  g_return_val_if_fail (record != NULL, NULL);
  return remote_device_new (connection, g_socket_connection_get_socket (connection), record);
}

PbRemoteDevice *
pb_remote_device_new_for_socket (GSocket *socket, const PbUsbipDeviceRecord *record)
{
  g_return_val_if_fail (G_IS_SOCKET (socket), NULL);
  g_return_val_if_fail (record != NULL, NULL);
  return remote_device_new (NULL, socket, record);
}

const PbUsbipDeviceRecord *
pb_remote_device_get_record (PbRemoteDevice *self)
{
  g_return_val_if_fail (PB_IS_REMOTE_DEVICE (self), NULL);
  return &self->record;
}

static guint32
take_seqnum (PbRemoteDevice *self)
{
  guint32 seqnum = self->next_seqnum++;
  if (seqnum == 0) /* 0 is nobody's: skip it on wrap-around */
    seqnum = self->next_seqnum++;
  return seqnum;
}

static guint32
devid (PbRemoteDevice *self)
{
  return (self->record.busnum << 16) | (self->record.devnum & 0xffff);
}

static gboolean
check_request (PbRemoteDevice *self, const PbRemoteUrbRequest *request, GError **error)
{
  if (request->ep > 15 || request->direction > PB_USBIP_DIR_IN)
    {
      g_set_error (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT, "invalid URB request: endpoint %u, direction %u",
                   request->ep, request->direction);
      return FALSE;
    }
  if (request->length > PB_USBIP_MAX_TRANSFER_LENGTH || (request->length > 0 && request->buffer == NULL))
    {
      g_set_error (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT, "invalid URB request: %u bytes (at most %u, with a buffer)",
                   request->length, PB_USBIP_MAX_TRANSFER_LENGTH);
      return FALSE;
    }
  if (request->n_iso_packets > PB_USBIP_MAX_ISO_PACKETS ||
      (request->n_iso_packets > 0 && request->iso_packets == NULL))
    {
      g_set_error (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT, "invalid URB request: %u iso packets (at most %d)",
                   request->n_iso_packets, PB_USBIP_MAX_ISO_PACKETS);
      return FALSE;
    }
  /* Results are unpacked to these offsets: they must lie inside the buffer. */
  for (guint i = 0; i < request->n_iso_packets; i++)
    if (request->iso_packets[i].offset > request->length ||
        request->iso_packets[i].length > request->length - request->iso_packets[i].offset)
      {
        g_set_error (error, PB_ERROR, PB_ERROR_INVALID_ARGUMENT,
                     "invalid URB request: iso packet %u (offset %u, %u bytes) is outside the %u-byte buffer", i,
                     request->iso_packets[i].offset, request->iso_packets[i].length, request->length);
        return FALSE;
      }
  return TRUE;
}

guint32
pb_remote_device_submit (PbRemoteDevice *self, const PbRemoteUrbRequest *request, PbRemoteUrbCallback callback,
                         gpointer user_data, GError **error)
{
  PbUsbipUrbHeader header = { 0 };
  Pending *pending;
  guint32 seqnum;

  g_return_val_if_fail (PB_IS_REMOTE_DEVICE (self), 0);
  g_return_val_if_fail (request != NULL, 0);

  if (self->closed)
    {
      g_set_error (error, PB_ERROR, PB_ERROR_CLOSED, "the connection to %s is closed", self->record.busid);
      return 0;
    }
  if (!check_request (self, request, error))
    return 0;

  pending = g_new0 (Pending, 1);
  seqnum = pending->seqnum = take_seqnum (self);
  pending->request = *request;
  pending->callback = callback;
  pending->user_data = user_data;

  header.command = PB_USBIP_CMD_SUBMIT;
  header.seqnum = seqnum;
  header.devid = devid (self);
  header.direction = request->direction;
  header.ep = request->ep;
  header.u.cmd_submit.transfer_flags = (request->transfer_flags & ~PB_USBIP_URB_DIR_IN) |
                                       (request->direction == PB_USBIP_DIR_IN ? PB_USBIP_URB_DIR_IN : 0);
  header.u.cmd_submit.transfer_buffer_length = request->length;
  header.u.cmd_submit.start_frame = request->start_frame;
  header.u.cmd_submit.number_of_packets = (gint32) request->n_iso_packets;
  header.u.cmd_submit.interval = request->interval;
  if (request->ep == 0)
    memcpy (header.u.cmd_submit.setup, request->setup, 8);
  pb_usbip_urb_header_encode (&header, pending->out.header);

  pending->out.base.iov[0] = (struct iovec) { pending->out.header, PB_USBIP_URB_HEADER_SIZE };
  pending->out.base.n_iov = 1;
  if (request->direction == PB_USBIP_DIR_OUT && request->length > 0)
    pending->out.base.iov[pending->out.base.n_iov++] = (struct iovec) { request->buffer, request->length };
  if (request->n_iso_packets > 0)
    {
      gsize size = (gsize) request->n_iso_packets * PB_USBIP_ISO_PACKET_SIZE;
      pending->iso_wire = g_malloc (size);
      pb_usbip_iso_packets_encode (request->iso_packets, request->n_iso_packets, pending->iso_wire);
      pending->out.base.iov[pending->out.base.n_iov++] = (struct iovec) { pending->iso_wire, size };
    }
  pending->queued = TRUE;
  g_hash_table_insert (self->pending, GUINT_TO_POINTER (seqnum), pending);
  queue_item (self, &pending->out);
  return seqnum;
}

gboolean
pb_remote_device_unlink (PbRemoteDevice *self, guint32 seqnum, GError **error)
{
  PbUsbipUrbHeader header = { 0 };
  OutItem *item;

  g_return_val_if_fail (PB_IS_REMOTE_DEVICE (self), FALSE);

  if (self->closed)
    {
      g_set_error (error, PB_ERROR, PB_ERROR_CLOSED, "the connection to %s is closed", self->record.busid);
      return FALSE;
    }
  item = g_new0 (OutItem, 1);
  item->standalone = TRUE;
  header.command = PB_USBIP_CMD_UNLINK;
  header.seqnum = take_seqnum (self);
  header.devid = devid (self);
  header.u.cmd_unlink.unlink_seqnum = seqnum;
  pb_usbip_urb_header_encode (&header, item->header);
  item->base.iov[0] = (struct iovec) { item->header, PB_USBIP_URB_HEADER_SIZE };
  item->base.n_iov = 1;
  g_hash_table_insert (self->unlinks, GUINT_TO_POINTER (header.seqnum), GUINT_TO_POINTER (seqnum));
  queue_item (self, item);
  return TRUE;
}

/* ---- blocking helpers ---- */

typedef struct {
  gboolean done;
  gboolean timed_out;         /* the transfer's time ran out: unlink */
  gboolean grace_over;        /* and the unlink's too: give up the connection */
  PbRemoteUrbResult result;
} SyncWait;

static void
on_sync_done (PbRemoteDevice *device, const PbRemoteUrbResult *result, gpointer user_data)
{
  SyncWait *wait = user_data;
  wait->result = *result;
  wait->done = TRUE;
}

static gboolean
on_sync_timeout (gpointer user_data)
{
  SyncWait *wait = user_data;

  if (wait->timed_out)
    wait->grace_over = TRUE;
  else
    wait->timed_out = TRUE;
  return G_SOURCE_REMOVE;
}

static GSource *
add_timeout (PbRemoteDevice *self, guint ms, SyncWait *wait)
{
  GSource *source = g_timeout_source_new (ms);

  g_source_set_callback (source, on_sync_timeout, wait, NULL);
  g_source_attach (source, self->context);
  return source;
}

static void
clear_timeout (GSource **source)
{
  if (*source != NULL)
    {
      g_source_destroy (*source);
      g_clear_pointer (source, g_source_unref);
    }
}

/* "stall (-EPIPE)" for the statuses a device gives, the number for the others. */
static char *
describe_status (gint32 status)
{
  switch (status)
    {
    case PB_URB_EPIPE: return g_strdup ("stall (-EPIPE)");
    case PB_URB_ECONNRESET: return g_strdup ("unlinked (-ECONNRESET)");
    case PB_URB_ESHUTDOWN: return g_strdup ("connection closed (-ESHUTDOWN)");
    case PB_URB_ENODEV: return g_strdup ("device gone (-ENODEV)");
    case PB_URB_EOVERFLOW: return g_strdup ("babble (-EOVERFLOW)");
    case PB_URB_ETIMEDOUT: return g_strdup ("timed out on the server (-ETIMEDOUT)");
    case PB_URB_EPROTO: return g_strdup ("protocol error (-EPROTO)");
    case PB_URB_EILSEQ: return g_strdup ("CRC error (-EILSEQ)");
    case PB_URB_EREMOTEIO: return g_strdup ("short transfer (-EREMOTEIO)");
    case PB_URB_EINVAL: return g_strdup ("invalid request (-EINVAL)");
    case PB_URB_ENOENT: return g_strdup ("cancelled (-ENOENT)");
    case PB_URB_EXDEV: return g_strdup ("partially completed (-EXDEV)");
    default: return g_strdup_printf ("status %d", status);
    }
}

static gboolean
submit_and_wait (PbRemoteDevice *self, const PbRemoteUrbRequest *request, const char *what,
                 guint32 *actual_length, guint timeout_ms, gint32 *status_out, GError **error)
{
  SyncWait wait = { 0 };
  GSource *timeout = NULL;
  guint32 seqnum;

  if (status_out != NULL)
    *status_out = 0;
  if (actual_length != NULL)
    *actual_length = 0;
  seqnum = pb_remote_device_submit (self, request, on_sync_done, &wait, error);
  if (seqnum == 0)
    {
      g_prefix_error (error, "%s: ", what);
      return FALSE;
    }
  if (timeout_ms > 0)
    timeout = add_timeout (self, timeout_ms, &wait);
  while (!wait.done)
    {
      if (wait.grace_over)
        {
          clear_timeout (&timeout);
          fail (self, PB_ERROR_TIMED_OUT, "no answer to the unlink of URB %u", seqnum);
          break; /* shut_down called us back */
        }
      if (wait.timed_out && timeout != NULL && g_source_is_destroyed (timeout))
        {
          g_source_unref (timeout);
          timeout = NULL;
          if (!pb_remote_device_unlink (self, seqnum, NULL))
            break;
          timeout = add_timeout (self, CLAMP (timeout_ms, UNLINK_GRACE_MIN_MS, UNLINK_GRACE_MAX_MS), &wait);
        }
      g_main_context_iteration (self->context, TRUE);
    }
  clear_timeout (&timeout);

  if (status_out != NULL)
    *status_out = wait.result.status;
  if (actual_length != NULL)
    *actual_length = wait.result.actual_length;
  /* Completed anyway while the unlink was on its way: that is a success. */
  if (wait.timed_out && wait.result.status != 0)
    {
      g_set_error (error, PB_ERROR, PB_ERROR_TIMED_OUT, "%s: no answer from %s within %u ms", what,
                   self->record.busid, timeout_ms);
      return FALSE;
    }
  if (wait.result.status != 0)
    {
      g_autofree char *status = describe_status (wait.result.status);

      if (wait.result.status == PB_URB_ESHUTDOWN && self->close_error != NULL)
        g_set_error (error, PB_ERROR, PB_ERROR_DEVICE, "%s failed: %s: %s", what, status, self->close_error->message);
      else
        g_set_error (error, PB_ERROR, PB_ERROR_DEVICE, "%s failed: %s", what, status);
      return FALSE;
    }
  return TRUE;
}

gboolean
pb_remote_device_control (PbRemoteDevice *self, guint8 request_type, guint8 request, guint16 value, guint16 index,
                          guint8 *data, guint16 length, guint32 *actual_length, guint timeout_ms, gint32 *status_out,
                          GError **error)
{
  PbRemoteUrbRequest urb = { 0 };
  g_autofree char *what = NULL;

  g_return_val_if_fail (PB_IS_REMOTE_DEVICE (self), FALSE);

  urb.ep = 0;
  urb.direction = (request_type & 0x80) ? PB_USBIP_DIR_IN : PB_USBIP_DIR_OUT;
  urb.setup[0] = request_type;
  urb.setup[1] = request;
  urb.setup[2] = value & 0xff;
  urb.setup[3] = value >> 8;
  urb.setup[4] = index & 0xff;
  urb.setup[5] = index >> 8;
  urb.setup[6] = length & 0xff;
  urb.setup[7] = length >> 8;
  urb.buffer = data;
  urb.length = length;
  what = g_strdup_printf ("control request 0x%02x/0x%02x", request_type, request);
  return submit_and_wait (self, &urb, what, actual_length, timeout_ms, status_out, error);
}

gboolean
pb_remote_device_transfer (PbRemoteDevice *self, guint ep, PbUsbipDirection direction, guint8 *data, guint32 length,
                           guint32 *actual_length, guint timeout_ms, gint32 *status_out, GError **error)
{
  PbRemoteUrbRequest urb = { 0 };
  g_autofree char *what = NULL;

  g_return_val_if_fail (PB_IS_REMOTE_DEVICE (self), FALSE);

  urb.ep = ep;
  urb.direction = direction;
  urb.buffer = data;
  urb.length = length;
  what = g_strdup_printf ("%s transfer on endpoint %u", direction == PB_USBIP_DIR_IN ? "IN" : "OUT", ep);
  return submit_and_wait (self, &urb, what, actual_length, timeout_ms, status_out, error);
}

guint
pb_remote_device_get_pending (PbRemoteDevice *self)
{
  g_return_val_if_fail (PB_IS_REMOTE_DEVICE (self), 0);
  return g_hash_table_size (self->pending) + (self->reading != NULL ? 1 : 0);
}

void
pb_remote_device_close (PbRemoteDevice *self)
{
  g_return_if_fail (PB_IS_REMOTE_DEVICE (self));
  /* A callback may drop the caller's reference. */
  g_object_ref (self);
  shut_down (self);
  if (self->connection != NULL)
    g_io_stream_close (G_IO_STREAM (self->connection), NULL, NULL);
  g_object_unref (self);
}

gboolean
pb_remote_device_is_closed (PbRemoteDevice *self)
{
  g_return_val_if_fail (PB_IS_REMOTE_DEVICE (self), TRUE);
  return self->closed;
}

const GError *
pb_remote_device_get_close_error (PbRemoteDevice *self)
{
  g_return_val_if_fail (PB_IS_REMOTE_DEVICE (self), NULL);
  return self->close_error;
}

static void
pb_remote_device_dispose (GObject *object)
{
  PbRemoteDevice *self = PB_REMOTE_DEVICE (object);

  if (self->socket != NULL)
    pb_remote_device_close (self);
  G_OBJECT_CLASS (pb_remote_device_parent_class)->dispose (object);
}

static void
pb_remote_device_finalize (GObject *object)
{
  PbRemoteDevice *self = PB_REMOTE_DEVICE (object);

  g_hash_table_unref (self->pending);
  g_hash_table_unref (self->unlinks);
  g_free (self->iso_buf);
  g_free (self->stage);
  g_clear_error (&self->close_error);
  g_clear_object (&self->socket);
  g_clear_object (&self->connection);
  g_clear_pointer (&self->context, g_main_context_unref);
  G_OBJECT_CLASS (pb_remote_device_parent_class)->finalize (object);
}

static void
pb_remote_device_class_init (PbRemoteDeviceClass *klass)
{
  G_OBJECT_CLASS (klass)->dispose = pb_remote_device_dispose;
  G_OBJECT_CLASS (klass)->finalize = pb_remote_device_finalize;
}

static void
pb_remote_device_init (PbRemoteDevice *self)
{
  self->next_seqnum = 1;
  self->stage = g_malloc (STAGE_SIZE);
  self->pending = g_hash_table_new (g_direct_hash, g_direct_equal);
  self->unlinks = g_hash_table_new (g_direct_hash, g_direct_equal);
}
