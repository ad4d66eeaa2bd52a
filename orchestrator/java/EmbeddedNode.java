/*
 * ltrr's launcher for a local OpenSearch node.
 *
 * It runs the real org.opensearch.node.Node with the distribution's lib/ as classpath and loads
 * every module and plugin as a bundle from disk (own class loaders, extension loading, version and
 * jar-hell checks kept). It skips only what the Bootstrap class adds on top: the root refusal and
 * the security manager, neither of which a loopback development node needs.
 *
 * Usage: java -cp "<home>/lib/*:<launcher dir>" EmbeddedNode <home> <config dir>
 */

import java.io.IOException;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.Collections;
import java.util.concurrent.CountDownLatch;

import org.opensearch.common.logging.LogConfigurator;
import org.opensearch.common.settings.Settings;
import org.opensearch.env.Environment;
import org.opensearch.node.InternalSettingsPreparer;
import org.opensearch.node.Node;

public final class EmbeddedNode extends Node {

    private EmbeddedNode(Environment environment) {
        // No classpath plugins: modules/ and plugins/ are loaded as on-disk bundles. The empty list
        // fits both the 2.x (Class) and 3.1+ (PluginInfo) constructor.
        super(environment, Collections.emptyList(), true);
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 2) {
            System.err.println("usage: EmbeddedNode <opensearch home> <config dir>");
            System.exit(2);
        }
        Path home = Paths.get(args[0]).toAbsolutePath();
        Path config = Paths.get(args[1]).toAbsolutePath();
        Settings input = Settings.builder().put("path.home", home.toString()).build();
        Environment environment = InternalSettingsPreparer.prepareEnvironment(
            input, Collections.emptyMap(), config, () -> "ltrr-node");
        LogConfigurator.registerErrorListener();
        LogConfigurator.setNodeName(Node.NODE_NAME_SETTING.get(environment.settings()));
        LogConfigurator.configure(environment);

        final EmbeddedNode node = new EmbeddedNode(environment);
        // Node threads are daemons; this latch keeps the JVM alive until a signal arrives.
        final CountDownLatch stopped = new CountDownLatch(1);
        Thread keepAlive = new Thread(() -> {
            try {
                stopped.await();
            } catch (InterruptedException ignored) {
                Thread.currentThread().interrupt();
            }
        }, "ltrr-keepalive");
        keepAlive.setDaemon(false);
        keepAlive.start();
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                node.close();
            } catch (IOException e) {
                e.printStackTrace();
            } finally {
                stopped.countDown();
            }
        }, "ltrr-shutdown"));
        try {
            node.start();
        } catch (Throwable t) {
            t.printStackTrace();
            System.exit(1);
        }
        System.out.println("ltrr: node started");
    }
}
