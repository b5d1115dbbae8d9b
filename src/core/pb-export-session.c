#define G_LOG_DOMAIN "plugboard"

#include "pb-export-session.h"
#include "pb-output-queue.h"

#include <errno.h>
#include <glib-unix.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#define INPUT_BUFFER_SIZE (64 * 1024)
/* A URB may carry 1024 iso descriptors (16 KiB): they must fit the input buffer whole. */
G_STATIC_ASSERT (INPUT_BUFFER_SIZE >= PB_USBIP_MAX_ISO_PACKETS * PB_USBIP_ISO_PACKET_SIZE + PB_USBIP_URB_HEADER_SIZE);
#define READS_PER_WAKEUP 16
#define POOL_MAX_URBS 32
#define POOL_MAX_BUFFER (1024 * 1024)

typedef enum {
  READ_HEADER,
  READ_OUT_DATA,
  READ_ISO_DESCRIPTORS,
} ReadState;

/* One reply waiting to be written: a RET_SUBMIT (with payload and iso descriptors) or a
 * RET_UNLINK. SessionUrb embeds one; lone RET_UNLINKs allocate their own. */
typedef struct {
  PbOutputItem base; /* first */
  guint8 header[PB_USBIP_URB_HEADER_SIZE];
  gboolean owned_by_urb;
} OutItem;

typedef struct {
  PbUrb urb; /* first: a PbUrb * is a SessionUrb * */
  PbExportSession *session;
  OutItem out;
  gsize buffer_capacity;
  guint iso_capacity;
  guint8 *iso_wire; /* iso_capacity * 16 bytes, for replies */
  gboolean in_flight;
} SessionUrb;

struct _PbExportSession {
  GObject parent_instance;

  GSocket *socket;
  int fd;
  PbDevice *device;
  gulong vanished_handler;
  char *peer_name;
  GMainContext *context;
  GSource *fd_source;
  gpointer fd_tag;
  GSource *drain_source;

  /* Input. */
  guint8 *inbuf;
  gsize in_start, in_end;
  ReadState read_state;
  SessionUrb *reading;     /* the URB whose OUT data / iso descriptors are being read */
  guint32 read_filled;

  /* URBs at the device, by seqnum. */
  GHashTable *in_flight;
  guint64 in_flight_bytes;
  GQueue pool;             /* idle SessionUrbs, reused */

  /* Output. */
  PbOutputQueue output;
  gboolean write_blocked;
  GIOCondition fd_condition;
  gboolean reading_paused;
  gboolean in_dispatch;

  gboolean started;
  gboolean closing;
  gboolean closed_emitted;
  GError *close_reason;
  PbExportSessionStats stats;
};

enum { SIGNAL_CLOSED, N_SIGNALS };
static guint signals[N_SIGNALS];

G_DEFINE_FINAL_TYPE (PbExportSession, pb_export_session, G_TYPE_OBJECT)

static void session_fail (PbExportSession *self, GError *error);
static void update_fd_condition (PbExportSession *self);
static void maybe_finish_close (PbExportSession *self);
static gboolean within_limits (PbExportSession *self);

/* ---- URB pool ---- */

static SessionUrb *
session_urb_acquire (PbExportSession *self, guint32 length, guint n_iso)
{
  SessionUrb *su = g_queue_pop_head (&self->pool);
  guint8 *buffer;
  PbUsbipIsoPacket *iso;
  guint8 *iso_wire;
  gsize capacity;
  guint iso_capacity;

  if (su == NULL)
    {
      su = g_new0 (SessionUrb, 1);
      su->session = self;
    }
  if (su->buffer_capacity < length)
    {
      g_free (su->urb.buffer);
      /* Fresh memory is zeroed so that a device bug can never send other sessions' data. */
      su->urb.buffer = g_malloc0 (length);
      su->buffer_capacity = length;
    }
  if (su->iso_capacity < n_iso)
    {
      g_free (su->urb.iso_packets);
      g_free (su->iso_wire);
      su->urb.iso_packets = g_new0 (PbUsbipIsoPacket, n_iso);
      su->iso_wire = g_malloc0 ((gsize) n_iso * PB_USBIP_ISO_PACKET_SIZE);
      su->iso_capacity = n_iso;
    }

  buffer = su->urb.buffer;
  iso = su->urb.iso_packets;
  iso_wire = su->iso_wire;
  capacity = su->buffer_capacity;
  iso_capacity = su->iso_capacity;
  memset (su, 0, sizeof *su);
  su->session = self;
  su->urb.buffer = buffer;
  su->urb.iso_packets = iso;
  su->iso_wire = iso_wire;
  su->buffer_capacity = capacity;
  su->iso_capacity = iso_capacity;
  su->out.owned_by_urb = TRUE;
  su->urb.owner_private = su;
  return su;
}

static void
session_urb_free (SessionUrb *su)
{
  g_free (su->urb.buffer);
  g_free (su->urb.iso_packets);
  g_free (su->iso_wire);
  g_free (su);
}

static void
session_urb_release (PbExportSession *self, SessionUrb *su)
{
  if (self->pool.length >= POOL_MAX_URBS || su->buffer_capacity > POOL_MAX_BUFFER)
    session_urb_free (su);
  else
    g_queue_push_head (&self->pool, su);
}

/* ---- output ---- */

static void
out_item_release (PbOutputItem *base, gpointer user_data)
{
  PbExportSession *self = user_data;
  OutItem *item = (OutItem *) base;

  if (item->owned_by_urb)
    session_urb_release (self, (SessionUrb *) ((guint8 *) item - G_STRUCT_OFFSET (SessionUrb, out)));
  else
    g_free (item);
}

static gboolean
flush_output (PbExportSession *self)
{
  int result = pb_output_queue_flush (&self->output, self->fd, out_item_release, self);

  if (result < 0)
    {
      session_fail (self, g_error_new (PB_ERROR, PB_ERROR_CLOSED, "write to %s failed: %s", self->peer_name,
                                       g_strerror (errno)));
      return FALSE;
    }
  if (self->write_blocked != (result == 0))
    {
      self->write_blocked = result == 0;
      update_fd_condition (self);
    }
  return TRUE;
}

static void
queue_output (PbExportSession *self, OutItem *item)
{
  pb_output_queue_push (&self->output, &item->base);
  /* Write at once unless the socket is known to be full: one write per reply, header and
   * payload together. */
  if (!self->write_blocked)
    flush_output (self);
  if (!within_limits (self))
    update_fd_condition (self);
}

static void
queue_ret_unlink (PbExportSession *self, OutItem *item, guint32 seqnum, gint32 status)
{
  PbUsbipUrbHeader header = { 0 };

  header.command = PB_USBIP_RET_UNLINK;
  header.seqnum = seqnum;
  header.u.ret_unlink.status = status;
  pb_usbip_urb_header_encode (&header, item->header);
  item->base.iov[0] = (struct iovec) { item->header, sizeof item->header };
  item->base.n_iov = 1;
  queue_output (self, item);
}

/* Iso IN data travels packed: move each packet's data down next to the previous one. */
static guint32
pack_iso_in_data (PbUrb *urb)
{
  guint32 packed = 0;

  for (guint i = 0; i < urb->n_iso_packets; i++)
    {
      PbUsbipIsoPacket *packet = &urb->iso_packets[i];
      guint32 n = MIN (packet->actual_length, packet->length);

      packet->actual_length = n;
      if (n > 0 && packet->offset != packed)
        memmove (urb->buffer + packed, urb->buffer + packet->offset, n);
      packed += n;
    }
  return packed;
}

static void
queue_ret_submit (PbExportSession *self, SessionUrb *su)
{
  PbUrb *urb = &su->urb;
  PbUsbipUrbHeader header = { 0 };
  guint32 payload = 0;

  if (urb->type == PB_ENDPOINT_ISOCHRONOUS)
    {
      if (urb->direction == PB_USBIP_DIR_IN)
        urb->actual_length = pack_iso_in_data (urb);
      else
        {
          guint32 sum = 0;
          for (guint i = 0; i < urb->n_iso_packets; i++)
            sum += MIN (urb->iso_packets[i].actual_length, urb->iso_packets[i].length);
          urb->actual_length = MIN (sum, urb->length);
        }
    }
  if (urb->direction == PB_USBIP_DIR_IN)
    payload = urb->actual_length;

  header.command = PB_USBIP_RET_SUBMIT;
  header.seqnum = urb->seqnum;
  header.u.ret_submit.status = urb->status;
  header.u.ret_submit.actual_length = urb->actual_length;
  header.u.ret_submit.start_frame = urb->start_frame;
  header.u.ret_submit.number_of_packets = urb->type == PB_ENDPOINT_ISOCHRONOUS ? (gint32) urb->n_iso_packets : 0;
  header.u.ret_submit.error_count = urb->error_count;
  pb_usbip_urb_header_encode (&header, su->out.header);

  su->out.base.iov[0] = (struct iovec) { su->out.header, sizeof su->out.header };
  su->out.base.n_iov = 1;
  if (payload > 0)
    su->out.base.iov[su->out.base.n_iov++] = (struct iovec) { urb->buffer, payload };
  if (urb->type == PB_ENDPOINT_ISOCHRONOUS)
    {
      pb_usbip_iso_packets_encode (urb->iso_packets, urb->n_iso_packets, su->iso_wire);
      su->out.base.iov[su->out.base.n_iov++] = (struct iovec) { su->iso_wire,
                                                      (gsize) urb->n_iso_packets * PB_USBIP_ISO_PACKET_SIZE };
    }
  self->stats.bytes_from_device += payload;
  queue_output (self, &su->out);
}

/* ---- completion ---- */

static void
on_urb_complete (PbUrb *urb, gpointer user_data)
{
  PbExportSession *self = user_data;
  SessionUrb *su = urb->owner_private;

  g_assert (su->in_flight);
  su->in_flight = FALSE;
  g_hash_table_remove (self->in_flight, GUINT_TO_POINTER (urb->seqnum));
  self->in_flight_bytes -= urb->length;

  if (self->closing)
    {
      session_urb_release (self, su);
      maybe_finish_close (self);
      return;
    }

  if (urb->cancelled)
    {
      /* Unlinked while pending: the RET_UNLINK answers it and no RET_SUBMIT may follow
       * (vhci treats a RET_SUBMIT for an unlinked seqnum as fatal). */
      self->stats.urbs_unlinked++;
      queue_ret_unlink (self, &su->out, urb->unlink_seqnum, PB_URB_ECONNRESET);
    }
  else
    queue_ret_submit (self, su);

  /* Room again below the limits: read on. */
  update_fd_condition (self);
}

/* ---- input ---- */

static void
dispatch_urb (PbExportSession *self, SessionUrb *su)
{
  self->reading = NULL;
  self->read_state = READ_HEADER;
  su->in_flight = TRUE;
  g_hash_table_insert (self->in_flight, GUINT_TO_POINTER (su->urb.seqnum), su);
  self->in_flight_bytes += su->urb.length;
  self->stats.urbs_submitted++;
  if (su->urb.direction == PB_USBIP_DIR_OUT)
    self->stats.bytes_to_device += su->urb.length;
  pb_device_submit (self->device, &su->urb);
}

static gboolean
handle_cmd_submit (PbExportSession *self, const PbUsbipUrbHeader *header, GError **error)
{
  PbEndpointType type;
  gboolean is_iso;
  guint n_iso;
  SessionUrb *su;
  PbUrb *urb;

  /* An endpoint beyond 15 is UNKNOWN here and rejected by pb_usbip_cmd_submit_validate(). */
  type = pb_device_get_endpoint_type (self->device, header->ep, header->direction);
  /* Framing follows the endpoint type, as in the kernel; for an endpoint the device does not
   * know, trust a plausible packet count. */
  is_iso = type == PB_ENDPOINT_ISOCHRONOUS ||
           (type == PB_ENDPOINT_UNKNOWN && header->u.cmd_submit.number_of_packets > 0 &&
            header->u.cmd_submit.number_of_packets <= PB_USBIP_MAX_ISO_PACKETS);
  if (!pb_usbip_cmd_submit_validate (header, is_iso, PB_USBIP_MAX_TRANSFER_LENGTH, error))
    return FALSE;
  if (g_hash_table_contains (self->in_flight, GUINT_TO_POINTER (header->seqnum)))
    {
      g_set_error (error, PB_ERROR, PB_ERROR_PROTOCOL, "seqnum %u is already in flight", header->seqnum);
      return FALSE;
    }

  n_iso = is_iso ? (guint) header->u.cmd_submit.number_of_packets : 0;
  su = session_urb_acquire (self, header->u.cmd_submit.transfer_buffer_length, n_iso);
  urb = &su->urb;
  urb->seqnum = header->seqnum;
  urb->ep = header->ep;
  urb->direction = header->direction;
  urb->type = is_iso ? PB_ENDPOINT_ISOCHRONOUS : type;
  urb->transfer_flags = header->u.cmd_submit.transfer_flags & PB_USBIP_URB_FLAGS_MEANINGFUL;
  memcpy (urb->setup, header->u.cmd_submit.setup, sizeof urb->setup);
  urb->start_frame = header->u.cmd_submit.start_frame;
  urb->interval = header->u.cmd_submit.interval;
  urb->length = header->u.cmd_submit.transfer_buffer_length;
  urb->n_iso_packets = n_iso;
  urb->complete_func = on_urb_complete;
  urb->complete_data = self;

  self->reading = su;
  self->read_filled = 0;
  if (urb->direction == PB_USBIP_DIR_OUT && urb->length > 0)
    self->read_state = READ_OUT_DATA;
  else if (n_iso > 0)
    self->read_state = READ_ISO_DESCRIPTORS;
  else
    dispatch_urb (self, su);
  return TRUE;
}

static void
handle_cmd_unlink (PbExportSession *self, const PbUsbipUrbHeader *header)
{
  SessionUrb *target = g_hash_table_lookup (self->in_flight, GUINT_TO_POINTER (header->u.cmd_unlink.unlink_seqnum));

  if (target == NULL || target->urb.cancelled)
    {
      /* Already completed (its RET_SUBMIT is sent or queued ahead of this reply), unknown, or
       * already being unlinked: nothing to cancel. */
      OutItem *item = g_new0 (OutItem, 1);
      queue_ret_unlink (self, item, header->seqnum, 0);
      return;
    }
  target->urb.cancelled = TRUE;
  target->urb.unlink_seqnum = header->seqnum;
  pb_device_cancel (self->device, &target->urb);
}

/* Below every limit on what the peer makes us hold. Queued replies are counted in bytes and
 * in number: a small reply holds far more memory than its 48 wire bytes. */
static gboolean
within_limits (PbExportSession *self)
{
  return g_hash_table_size (self->in_flight) < PB_EXPORT_SESSION_MAX_IN_FLIGHT &&
         self->in_flight_bytes < PB_EXPORT_SESSION_MAX_IN_FLIGHT_BYTES &&
         self->output.queued_bytes <= PB_EXPORT_SESSION_MAX_QUEUED_OUTPUT &&
         self->output.items.length < PB_EXPORT_SESSION_MAX_QUEUED_REPLIES;
}

/* Consumes complete messages from the input buffer. FALSE once the session is failing. */
static gboolean
process_input (PbExportSession *self)
{
  while (!self->closing)
    {
      gsize available = self->in_end - self->in_start;
      const guint8 *data = self->inbuf + self->in_start;

      switch (self->read_state)
        {
        case READ_HEADER:
          {
            PbUsbipUrbHeader header;
            GError *error = NULL;

            if (available < PB_USBIP_URB_HEADER_SIZE)
              return TRUE;
            /* Stop taking requests while over a limit; completions resume reading. */
            if (!within_limits (self))
              return TRUE;
            if (!pb_usbip_urb_header_decode (data, available, &header, &error))
              {
                session_fail (self, error);
                return FALSE;
              }
            self->in_start += PB_USBIP_URB_HEADER_SIZE;
            if (header.command == PB_USBIP_CMD_SUBMIT)
              {
                if (!handle_cmd_submit (self, &header, &error))
                  {
                    session_fail (self, error);
                    return FALSE;
                  }
              }
            else if (header.command == PB_USBIP_CMD_UNLINK)
              handle_cmd_unlink (self, &header);
            else
              {
                session_fail (self, g_error_new (PB_ERROR, PB_ERROR_PROTOCOL,
                                                 "unexpected command %u from the client", header.command));
                return FALSE;
              }
            break;
          }

        case READ_OUT_DATA:
          {
            SessionUrb *su = self->reading;
            gsize n = MIN (available, su->urb.length - self->read_filled);

            if (n == 0)
              return TRUE;
            memcpy (su->urb.buffer + self->read_filled, data, n);
            self->in_start += n;
            self->read_filled += n;
            if (self->read_filled == su->urb.length)
              {
                if (su->urb.n_iso_packets > 0)
                  self->read_state = READ_ISO_DESCRIPTORS;
                else
                  dispatch_urb (self, su);
              }
            break;
          }

        case READ_ISO_DESCRIPTORS:
          {
            SessionUrb *su = self->reading;
            gsize need = (gsize) su->urb.n_iso_packets * PB_USBIP_ISO_PACKET_SIZE;
            GError *error = NULL;

            if (available < need)
              return TRUE;
            if (!pb_usbip_iso_packets_decode (data, available, su->urb.n_iso_packets, su->urb.length,
                                              su->urb.iso_packets, &error))
              {
                session_urb_release (self, su);
                self->reading = NULL;
                session_fail (self, error);
                return FALSE;
              }
            for (guint i = 0; i < su->urb.n_iso_packets; i++)
              {
                su->urb.iso_packets[i].actual_length = 0;
                su->urb.iso_packets[i].status = 0;
              }
            self->in_start += need;
            dispatch_urb (self, su);
            break;
          }
        }
    }
  return FALSE;
}

static gboolean
reading_allowed (PbExportSession *self)
{
  return !self->closing && within_limits (self);
}

/* Reads what the socket has. FALSE when the session ended. */
static gboolean
read_socket (PbExportSession *self)
{
  for (int round = 0; round < READS_PER_WAKEUP && reading_allowed (self); round++)
    {
      gssize n;

      if (self->read_state == READ_OUT_DATA && self->in_start == self->in_end)
        {
          /* Large OUT payloads go straight into the URB's buffer: one copy fewer. */
          SessionUrb *su = self->reading;
          gsize want = su->urb.length - self->read_filled;
          n = recv (self->fd, su->urb.buffer + self->read_filled, want, MSG_DONTWAIT);
          if (n > 0)
            {
              gboolean drained = (gsize) n < want;
              self->read_filled += (guint32) n;
              if (self->read_filled == su->urb.length)
                {
                  if (su->urb.n_iso_packets > 0)
                    self->read_state = READ_ISO_DESCRIPTORS;
                  else
                    dispatch_urb (self, su);
                }
              if (!process_input (self))
                return FALSE;
              /* A short read means the socket is empty: skip the recv that would say EAGAIN. */
              if (drained)
                return TRUE;
              continue;
            }
        }
      else
        {
          if (self->in_start == self->in_end)
            self->in_start = self->in_end = 0;
          else if (self->in_start > 0 && INPUT_BUFFER_SIZE - self->in_end < INPUT_BUFFER_SIZE / 2)
            {
              memmove (self->inbuf, self->inbuf + self->in_start, self->in_end - self->in_start);
              self->in_end -= self->in_start;
              self->in_start = 0;
            }
          if (self->in_end == INPUT_BUFFER_SIZE)
            return process_input (self);
          n = recv (self->fd, self->inbuf + self->in_end, INPUT_BUFFER_SIZE - self->in_end, MSG_DONTWAIT);
          if (n > 0)
            {
              gboolean drained = (gsize) n < INPUT_BUFFER_SIZE - self->in_end;
              self->in_end += (gsize) n;
              if (!process_input (self))
                return FALSE;
              if (drained)
                return TRUE;
              continue;
            }
        }

      if (n == 0)
        {
          session_fail (self, g_error_new (PB_ERROR, PB_ERROR_CLOSED, "%s closed the connection", self->peer_name));
          return FALSE;
        }
      if (errno == EINTR)
        continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        return TRUE;
      session_fail (self, g_error_new (PB_ERROR, PB_ERROR_CLOSED, "read from %s failed: %s",
                                       self->peer_name, g_strerror (errno)));
      return FALSE;
    }
  return TRUE;
}

static void
handle_socket_ready (PbExportSession *self, GIOCondition condition)
{
  if ((condition & G_IO_OUT) && !flush_output (self))
    return;
  if ((condition & (G_IO_IN | G_IO_HUP | G_IO_ERR)) && !self->closing)
    {
      if (!process_input (self) && self->closing)
        return;
      read_socket (self);
    }
  /* Over a limit now: stop polling for input until completions make room. */
  update_fd_condition (self);
}

static gboolean
on_fd_ready (gint fd, GIOCondition condition, gpointer user_data)
{
  /* A signal handler may drop the last reference while we are inside. */
  PbExportSession *self = g_object_ref (user_data);

  if (!self->in_dispatch)
    {
      self->in_dispatch = TRUE;
      handle_socket_ready (self, condition);
      self->in_dispatch = FALSE;
    }
  g_object_unref (self);
  return G_SOURCE_CONTINUE;
}

static gboolean
fd_source_dispatch (GSource *source, GSourceFunc callback, gpointer user_data)
{
  PbExportSession *self = user_data;
  GIOCondition condition = g_source_query_unix_fd (source, self->fd_tag);

  return ((GUnixFDSourceFunc) (void (*) (void)) callback) (self->fd, condition, user_data);
}

static GSourceFuncs fd_source_funcs = { .dispatch = fd_source_dispatch };

static gboolean
on_drain (gpointer user_data)
{
  PbExportSession *self = g_object_ref (user_data);

  g_clear_pointer (&self->drain_source, g_source_unref);
  if (!self->closing && process_input (self))
    read_socket (self);
  update_fd_condition (self);
  g_object_unref (self);
  return G_SOURCE_REMOVE;
}

static void
update_fd_condition (PbExportSession *self)
{
  GIOCondition condition = 0;
  gboolean want_read;

  if (self->fd_source == NULL)
    return;
  want_read = reading_allowed (self);
  if (want_read)
    condition |= G_IO_IN;
  if (self->write_blocked)
    condition |= G_IO_OUT;
  if (condition != self->fd_condition)
    {
      g_source_modify_unix_fd (self->fd_source, self->fd_tag, condition);
      self->fd_condition = condition;
    }

  /* Reading resumes after a pause: what is buffered already may hold whole messages, and the
   * socket will not wake us for those. Handle them outside this call stack. */
  if (want_read && self->reading_paused && self->drain_source == NULL)
    {
      self->drain_source = g_idle_source_new ();
      g_source_set_priority (self->drain_source, G_PRIORITY_DEFAULT);
      g_source_set_callback (self->drain_source, on_drain, self, NULL);
      g_source_attach (self->drain_source, self->context);
    }
  self->reading_paused = !want_read;
}

/* ---- lifecycle ---- */

static gboolean
emit_closed_idle (gpointer user_data)
{
  PbExportSession *self = user_data;

  g_signal_emit (self, signals[SIGNAL_CLOSED], 0, self->close_reason);
  return G_SOURCE_REMOVE;
}

static void
maybe_finish_close (PbExportSession *self)
{
  GSource *idle;

  if (!self->closing || self->closed_emitted || g_hash_table_size (self->in_flight) > 0)
    return;
  self->closed_emitted = TRUE;
  if (self->started)
    pb_device_close (self->device);
  g_socket_close (self->socket, NULL);

  /* Emit from the main loop: the caller may be deep inside a device callback. */
  idle = g_idle_source_new ();
  g_source_set_callback (idle, emit_closed_idle, g_object_ref (self), g_object_unref);
  g_source_attach (idle, self->context);
  g_source_unref (idle);
}

static void
session_fail (PbExportSession *self, GError *error)
{
  pb_export_session_close (self, error);
  g_error_free (error);
}

void
pb_export_session_close (PbExportSession *self, const GError *reason)
{
  GHashTableIter iter;
  gpointer value;
  GList *pending = NULL;

  g_return_if_fail (PB_IS_EXPORT_SESSION (self));

  if (self->closing)
    return;
  self->closing = TRUE;
  self->close_reason = reason != NULL ? g_error_copy (reason)
                                      : g_error_new_literal (PB_ERROR, PB_ERROR_CLOSED, "session closed");

  if (self->fd_source != NULL)
    {
      g_source_destroy (self->fd_source);
      g_clear_pointer (&self->fd_source, g_source_unref);
    }
  if (self->drain_source != NULL)
    {
      g_source_destroy (self->drain_source);
      g_clear_pointer (&self->drain_source, g_source_unref);
    }
  shutdown (self->fd, SHUT_RDWR);

  /* Replies nobody will read. */
  pb_output_queue_clear (&self->output, out_item_release, self);
  if (self->reading != NULL)
    {
      session_urb_release (self, self->reading);
      self->reading = NULL;
    }

  /* Every URB still at the device is cancelled; the device completes each, then we close it. */
  g_hash_table_iter_init (&iter, self->in_flight);
  while (g_hash_table_iter_next (&iter, NULL, &value))
    pending = g_list_prepend (pending, value);
  for (GList *l = pending; l != NULL; l = l->next)
    {
      SessionUrb *su = l->data;
      if (!su->urb.cancelled)
        {
          su->urb.cancelled = TRUE;
          pb_device_cancel (self->device, &su->urb);
        }
    }
  g_list_free (pending);
  maybe_finish_close (self);
}

PbExportSession *
pb_export_session_new (GSocket *socket, PbDevice *device, const char *peer_name)
{
  PbExportSession *self;

  g_return_val_if_fail (G_IS_SOCKET (socket), NULL);
  g_return_val_if_fail (PB_IS_DEVICE (device), NULL);

  self = g_object_new (PB_TYPE_EXPORT_SESSION, NULL);
  self->socket = g_object_ref (socket);
  self->fd = g_socket_get_fd (socket);
  self->device = g_object_ref (device);
  self->peer_name = g_strdup (peer_name != NULL ? peer_name : "peer");
  return self;
}

/* The hardware is gone: end the connection, so that the client's vhci port is freed. Every
 * pending URB is cancelled and completes (the device fails them) before "closed". */
static void
on_device_vanished (PbDevice *device, gpointer user_data)
{
  PbExportSession *self = user_data;
  g_autoptr(GError) reason = g_error_new (PB_ERROR, PB_ERROR_DEVICE, "%s was unplugged", pb_device_get_busid (device));

  pb_export_session_close (self, reason);
}

gboolean
pb_export_session_start (PbExportSession *self, GError **error)
{
  int one = 1;

  g_return_val_if_fail (PB_IS_EXPORT_SESSION (self), FALSE);
  g_return_val_if_fail (!self->started && !self->closing, FALSE);

  if (!pb_device_open (self->device, error))
    {
      g_prefix_error (error, "cannot open %s: ", pb_device_get_busid (self->device));
      return FALSE;
    }
  self->started = TRUE;
  self->vanished_handler = g_signal_connect (self->device, "vanished", G_CALLBACK (on_device_vanished), self);

  g_socket_set_blocking (self->socket, FALSE);
  if (g_socket_get_family (self->socket) != G_SOCKET_FAMILY_UNIX)
    {
      /* Nagle would hold small control replies back; keepalive notices a vanished client. */
      setsockopt (self->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      g_socket_set_keepalive (self->socket, TRUE);
    }

  self->context = g_main_context_ref_thread_default ();
  /* One source for the socket whose condition follows our state: read unless over a limit,
   * write while the socket is full. */
  self->fd_source = g_source_new (&fd_source_funcs, sizeof (GSource));
  self->fd_tag = g_source_add_unix_fd (self->fd_source, self->fd, G_IO_IN);
  self->fd_condition = G_IO_IN;
  g_source_set_callback (self->fd_source, (GSourceFunc) (void (*) (void)) on_fd_ready, self, NULL);
  g_source_set_name (self->fd_source, "PbExportSession socket");
  /* A blocked (non-recursive) source is taken out of the poll set and put back around every
   * dispatch, which costs two wakeup writes per request; in_dispatch guards re-entry instead. */
  g_source_set_can_recurse (self->fd_source, TRUE);
  g_source_attach (self->fd_source, self->context);
  return TRUE;
}

PbDevice *
pb_export_session_get_device (PbExportSession *self)
{
  g_return_val_if_fail (PB_IS_EXPORT_SESSION (self), NULL);
  return self->device;
}

const char *
pb_export_session_get_peer_name (PbExportSession *self)
{
  g_return_val_if_fail (PB_IS_EXPORT_SESSION (self), NULL);
  return self->peer_name;
}

gboolean
pb_export_session_is_closed (PbExportSession *self)
{
  g_return_val_if_fail (PB_IS_EXPORT_SESSION (self), TRUE);
  return self->closing;
}

void
pb_export_session_get_stats (PbExportSession *self, PbExportSessionStats *stats)
{
  g_return_if_fail (PB_IS_EXPORT_SESSION (self));
  *stats = self->stats;
  stats->in_flight = g_hash_table_size (self->in_flight);
}

static void
pb_export_session_dispose (GObject *object)
{
  PbExportSession *self = PB_EXPORT_SESSION (object);

  if (!self->closing)
    pb_export_session_close (self, NULL);
  if (self->vanished_handler != 0)
    g_clear_signal_handler (&self->vanished_handler, self->device);
  G_OBJECT_CLASS (pb_export_session_parent_class)->dispose (object);
}

static void
pb_export_session_finalize (GObject *object)
{
  PbExportSession *self = PB_EXPORT_SESSION (object);
  SessionUrb *su;

  /* A device that never completed a cancelled URB keeps it: leak it rather than free memory
   * the device may still write to. */
  if (g_hash_table_size (self->in_flight) > 0)
    g_warning ("%s: %u URBs never completed by %s", self->peer_name, g_hash_table_size (self->in_flight),
               pb_device_get_busid (self->device));
  while ((su = g_queue_pop_head (&self->pool)) != NULL)
    session_urb_free (su);
  g_hash_table_unref (self->in_flight);
  g_free (self->inbuf);
  g_clear_error (&self->close_reason);
  g_clear_pointer (&self->context, g_main_context_unref);
  g_object_unref (self->socket);
  g_object_unref (self->device);
  g_free (self->peer_name);
  G_OBJECT_CLASS (pb_export_session_parent_class)->finalize (object);
}

static void
pb_export_session_class_init (PbExportSessionClass *klass)
{
  GObjectClass *object_class = G_OBJECT_CLASS (klass);

  object_class->dispose = pb_export_session_dispose;
  object_class->finalize = pb_export_session_finalize;

  /* closed (const GError *reason): the session ended and the device is free again. */
  signals[SIGNAL_CLOSED] = g_signal_new ("closed", G_TYPE_FROM_CLASS (klass), G_SIGNAL_RUN_LAST, 0,
                                         NULL, NULL, NULL, G_TYPE_NONE, 1, G_TYPE_ERROR);
}

static void
pb_export_session_init (PbExportSession *self)
{
  self->inbuf = g_malloc (INPUT_BUFFER_SIZE);
  self->in_flight = g_hash_table_new (g_direct_hash, g_direct_equal);
}
