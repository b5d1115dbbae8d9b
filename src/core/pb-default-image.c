/* A FAT16 "superfloppy" (no partition table: Linux mounts /dev/sdX directly) made in memory. */
#define G_LOG_DOMAIN "plugboard"

#include "pb-default-image.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "pb-error.h"

#define SECTOR 512
#define SECTORS_PER_CLUSTER 4
#define RESERVED_SECTORS 4
#define NUMBER_OF_FATS 2
#define ROOT_ENTRIES 512
#define SECTORS_PER_FAT 32
#define ROOT_SECTORS (ROOT_ENTRIES * 32 / SECTOR)
#define FIRST_DATA_SECTOR (RESERVED_SECTORS + NUMBER_OF_FATS * SECTORS_PER_FAT + ROOT_SECTORS)
#define TOTAL_SECTORS (PB_DEFAULT_IMAGE_SIZE / SECTOR)
#define CLUSTER_COUNT ((TOTAL_SECTORS - FIRST_DATA_SECTOR) / SECTORS_PER_CLUSTER)

/* FAT16 needs 4085..65524 clusters, and the FAT must have an entry for each (plus two). */
G_STATIC_ASSERT (CLUSTER_COUNT >= 4085 && CLUSTER_COUNT < 65525);
G_STATIC_ASSERT ((CLUSTER_COUNT + 2) * 2 <= SECTORS_PER_FAT * SECTOR);
G_STATIC_ASSERT (TOTAL_SECTORS <= 0xffff);

static const char readme_text[] =
  "This disk is Plugboard's embedded demo image.\r\n"
  "\r\n"
  "It lives in the memory of the `plugboard serve` process that shares it:\r\n"
  "you may write to it, and everything written is gone when the server stops.\r\n"
  "\r\n"
  "To share a disk image of your own:\r\n"
  "    plugboard serve --virtual msc:IMAGE        (read-write)\r\n"
  "    plugboard serve --virtual msc:IMAGE,ro     (read-only)\r\n"
  "or to plug it into this computer without a network:\r\n"
  "    sudo plugboard virtual --attach msc:IMAGE\r\n";

G_STATIC_ASSERT (sizeof readme_text - 1 <= SECTORS_PER_CLUSTER * SECTOR);

const char *
pb_default_image_readme_text (void)
{
  return readme_text;
}

static void
put16 (guint8 *p, guint16 v)
{
  p[0] = v & 0xff;
  p[1] = v >> 8;
}

static void
put32 (guint8 *p, guint32 v)
{
  put16 (p, v & 0xffff);
  put16 (p + 2, v >> 16);
}

static gboolean
write_at (int fd, const void *data, gsize len, off_t offset, GError **error)
{
  const guint8 *p = data;

  while (len > 0)
    {
      gssize n = pwrite (fd, p, len, offset);
      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0)
        {
          g_set_error (error, PB_ERROR, PB_ERROR_FAILED, "cannot write the default image: %s", g_strerror (errno));
          return FALSE;
        }
      p += n;
      len -= (gsize) n;
      offset += n;
    }
  return TRUE;
}

int
pb_default_image_create (GError **error)
{
  guint8 boot[SECTOR] = { 0 };
  guint8 fat[4 * 2] = { 0 };
  guint8 root[2 * 32] = { 0 };
  /* 2026-01-01 12:00:00, FAT's packed date and time. */
  const guint16 date = ((2026 - 1980) << 9) | (1 << 5) | 1;
  const guint16 time = 12 << 11;
  int fd;

  fd = memfd_create ("plugboard-default-image", MFD_CLOEXEC);
  if (fd < 0)
    {
      g_set_error (error, PB_ERROR, PB_ERROR_FAILED, "cannot create the default image: %s", g_strerror (errno));
      return -1;
    }
  if (ftruncate (fd, PB_DEFAULT_IMAGE_SIZE) < 0)
    {
      g_set_error (error, PB_ERROR, PB_ERROR_FAILED, "cannot size the default image: %s", g_strerror (errno));
      close (fd);
      return -1;
    }

  /* Boot sector and BIOS parameter block. */
  boot[0] = 0xeb;
  boot[1] = 0x3c;
  boot[2] = 0x90;
  memcpy (boot + 3, "PLUGBRD ", 8);
  put16 (boot + 11, SECTOR);
  boot[13] = SECTORS_PER_CLUSTER;
  put16 (boot + 14, RESERVED_SECTORS);
  boot[16] = NUMBER_OF_FATS;
  put16 (boot + 17, ROOT_ENTRIES);
  put16 (boot + 19, TOTAL_SECTORS);
  boot[21] = 0xf8; /* fixed disk */
  put16 (boot + 22, SECTORS_PER_FAT);
  put16 (boot + 24, 32); /* sectors per track */
  put16 (boot + 26, 64); /* heads */
  boot[36] = 0x80;
  boot[38] = 0x29; /* extended boot signature: the next three fields are valid */
  put32 (boot + 39, 0x50420111);
  memcpy (boot + 43, "PLUGBOARD  ", 11);
  memcpy (boot + 54, "FAT16   ", 8);
  /* Not bootable: a BIOS that jumps here asks for the next boot device (INT 18h), then halts. */
  boot[62] = 0xcd;
  boot[63] = 0x18;
  boot[64] = 0xf4;
  boot[65] = 0xeb;
  boot[66] = 0xfd;
  boot[510] = 0x55;
  boot[511] = 0xaa;

  /* FAT: media descriptor, end-of-chain marker, README.TXT in cluster 2 alone. */
  put16 (fat, 0xfff8);
  put16 (fat + 2, 0xffff);
  put16 (fat + 4, 0xffff);

  /* Root directory: the volume label, then README.TXT. */
  memcpy (root, "PLUGBOARD  ", 11);
  root[11] = 0x08;
  put16 (root + 22, time);
  put16 (root + 24, date);
  memcpy (root + 32, "README  TXT", 11);
  root[32 + 11] = 0x20; /* archive */
  put16 (root + 32 + 14, time);
  put16 (root + 32 + 16, date);
  put16 (root + 32 + 18, date);
  put16 (root + 32 + 22, time);
  put16 (root + 32 + 24, date);
  put16 (root + 32 + 26, 2);
  put32 (root + 32 + 28, sizeof readme_text - 1);

  if (!write_at (fd, boot, sizeof boot, 0, error) ||
      !write_at (fd, fat, sizeof fat, (off_t) RESERVED_SECTORS * SECTOR, error) ||
      !write_at (fd, fat, sizeof fat, (off_t) (RESERVED_SECTORS + SECTORS_PER_FAT) * SECTOR, error) ||
      !write_at (fd, root, sizeof root, (off_t) (RESERVED_SECTORS + NUMBER_OF_FATS * SECTORS_PER_FAT) * SECTOR, error) ||
      !write_at (fd, readme_text, sizeof readme_text - 1, (off_t) FIRST_DATA_SECTOR * SECTOR, error))
    {
      close (fd);
      return -1;
    }
  return fd;
}
